// Empty: emu_device.h defines __nv_bfloat16 for the emulator.
#pragma once
