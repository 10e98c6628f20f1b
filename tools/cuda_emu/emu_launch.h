// emu_launch.h: what the emulated cuLaunchKernel (emu_driver.cpp) hands a
// kernel library's emu_launch_<name> (emu_sched.h runs it).
#pragma once
#include <cstddef>

namespace emu {

struct Launch {
    unsigned grid[3];
    unsigned block[3];
    unsigned shared_bytes;
    char* error;  // a message of up to error_cap bytes when the launch fails
    size_t error_cap;
};

}  // namespace emu
