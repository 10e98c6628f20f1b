// Empty: emu_device.h defines __half for the emulator.
#pragma once
