// emu_sched.h: runs a kernel's grid on the CPU, block after block, each
// block's threads as fibers (ucontext) switched cooperatively on this one
// host thread.
//
// Fibers start with setcontext (one system call, to set the signal mask)
// and then switch with _setjmp/_longjmp, which make none.
//
// A fiber runs until it reaches a synchronisation point or returns; fibers
// run in thread order, or in reverse order in every other block and launch.
// When no fiber can run, the scheduler releases, in this order: each warp whose
// waiting lanes name (in their masks) only lanes that are waiting with them,
// then the whole block when every live thread waits at __syncthreads.
// Anything else is a kernel that would hang or be undefined on a GPU (a
// barrier some threads never reach, a shuffle naming an exited lane): the
// launch fails with a message naming the block.
//
// Values cross fibers through each thread's `slot`, written before the
// wait and read after it; a second wait keeps a fast fiber from
// overwriting its slot before the slow ones have read it.
#pragma once
#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <cstddef>
#include <cstdio>
#include <cstring>
#include <type_traits>
#include <utility>

#include "emu_launch.h"

namespace emu {

enum class State { Run, Block, Warp, Done };

struct Thread {
    ucontext_t ctx;  // where it starts
    jmp_buf at;      // where it waits
    bool started;
    dim3 idx;
    unsigned linear;
    State state;
    unsigned mask;  // the lanes a warp operation waits for
    unsigned long long slot;
};

constexpr unsigned MAX_THREADS = 1024;
constexpr size_t STACK_BYTES = 256 * 1024;

inline Thread threads[MAX_THREADS];
inline char* stacks[MAX_THREADS];
inline jmp_buf scheduler;
inline Thread* current;
inline unsigned nthreads;
inline dim3 block_idx, block_dim, grid_dim;
inline void (*body)(void*);
inline void* body_arg;

inline void wait(State s) {
    current->state = s;
    if (!_setjmp(current->at)) _longjmp(scheduler, 1);
}

inline void block_barrier() { wait(State::Block); }

inline unsigned lane() { return current->linear & 31u; }
inline Thread* warp_base() { return &threads[current->linear & ~31u]; }

inline void warp_wait(unsigned mask) {
    current->mask = mask | (1u << lane());
    wait(State::Warp);
}


inline unsigned warp_ballot(unsigned mask, bool pred) {
    current->slot = pred;
    warp_wait(mask);
    unsigned r = 0;
    Thread* w = warp_base();
    for (unsigned l = 0; l < 32; l++)
        if ((mask >> l) & 1u && w[l].slot) r |= 1u << l;
    warp_wait(mask);
    return r;
}

template <typename T, typename F>
inline T warp_shuffle(unsigned mask, T v, F src_of, int width) {
    static_assert(sizeof(T) <= sizeof(unsigned long long), "shuffle of at most 8 bytes");
    unsigned long long s = 0;
    std::memcpy(&s, &v, sizeof(T));
    current->slot = s;
    warp_wait(mask);
    const unsigned l = lane();
    const unsigned base = l & ~(unsigned)(width - 1);
    const unsigned src = src_of(l);
    T r = v;
    if (src >= base && src < base + (unsigned)width && src < 32) {
        std::memcpy(&r, &warp_base()[src].slot, sizeof(T));
    }
    warp_wait(mask);
    return r;
}

// How many live threads of the block pass `v`.
inline unsigned block_count(bool v) {
    current->slot = v;
    block_barrier();
    unsigned n = 0;
    for (unsigned t = 0; t < nthreads; t++)
        if (threads[t].state != State::Done) n += (unsigned)threads[t].slot;
    block_barrier();
    return n;
}

inline void fiber_main() {
    body(body_arg);
    current->state = State::Done;
    _longjmp(scheduler, 1);
}

// Releases what can be released; false when nothing can (a hang on a GPU).
inline bool release(char* msg, size_t cap) {
    bool any = false;
    for (unsigned base = 0; base < nthreads; base += 32) {
        unsigned waiting = 0, named = 0;
        for (unsigned l = 0; l < 32 && base + l < nthreads; l++) {
            if (threads[base + l].state == State::Warp) {
                waiting |= 1u << l;
                named |= threads[base + l].mask;
            }
        }
        if (waiting && (named & ~waiting) == 0) {
            for (unsigned l = 0; l < 32; l++)
                if ((waiting >> l) & 1u) threads[base + l].state = State::Run;
            any = true;
        }
    }
    if (any) return true;
    bool all_block = true, some_block = false;
    for (unsigned t = 0; t < nthreads; t++) {
        if (threads[t].state == State::Block) some_block = true;
        else if (threads[t].state != State::Done) all_block = false;
    }
    if (all_block && some_block) {
        for (unsigned t = 0; t < nthreads; t++)
            if (threads[t].state == State::Block) threads[t].state = State::Run;
        return true;
    }
    unsigned at_block = 0, at_warp = 0, done = 0;
    unsigned first_warp = nthreads, first_missing = nthreads;
    for (unsigned t = 0; t < nthreads; t++) {
        switch (threads[t].state) {
            case State::Block: at_block++; break;
            case State::Warp:
                at_warp++;
                if (first_warp == nthreads) {
                    first_warp = t;
                    const unsigned base = t & ~31u;
                    for (unsigned l = 0; l < 32; l++)
                        if ((threads[t].mask >> l) & 1u &&
                            (base + l >= nthreads || threads[base + l].state != State::Warp))
                            { first_missing = base + l; break; }
                }
                break;
            case State::Done: done++; break;
            case State::Run: break;
        }
    }
    std::snprintf(msg, cap,
                  "block (%u, %u, %u) cannot go on: %u threads wait at __syncthreads, %u at a "
                  "warp operation (first: thread %u, waiting for thread %u, which %s), %u have "
                  "returned",
                  block_idx.x, block_idx.y, block_idx.z, at_block, at_warp, first_warp,
                  first_missing,
                  first_missing >= nthreads ? "does not exist"
                  : threads[first_missing].state == State::Done ? "has returned"
                                                                : "waits at __syncthreads",
                  done);
    return false;
}

// Runs body over the whole grid; 0, or 1 with l->error filled in.
inline unsigned launches;

inline int run_grid(const Launch* l) {
    launches++;
    nthreads = l->block[0] * l->block[1] * l->block[2];
    if (nthreads == 0 || nthreads > MAX_THREADS) {
        std::snprintf(l->error, l->error_cap, "block of %u threads (1 to %u allowed)", nthreads,
                      MAX_THREADS);
        return 1;
    }
    for (unsigned t = 0; t < nthreads; t++) {
        if (!stacks[t]) {
            void* p = mmap(nullptr, STACK_BYTES, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (p == MAP_FAILED) {
                std::snprintf(l->error, l->error_cap, "no memory for a fiber stack");
                return 1;
            }
            mprotect(p, 4096, PROT_NONE);  // guard page: an overflow faults
            stacks[t] = (char*)p;
        }
    }
    grid_dim = dim3{l->grid[0], l->grid[1], l->grid[2]};
    block_dim = dim3{l->block[0], l->block[1], l->block[2]};
    for (unsigned bz = 0; bz < l->grid[2]; bz++)
        for (unsigned by = 0; by < l->grid[1]; by++)
            for (unsigned bx = 0; bx < l->grid[0]; bx++) {
                block_idx = dim3{bx, by, bz};
                for (unsigned t = 0; t < nthreads; t++) {
                    Thread& th = threads[t];
                    th.linear = t;
                    th.idx = dim3{t % l->block[0], (t / l->block[0]) % l->block[1],
                                  t / (l->block[0] * l->block[1])};
                    th.state = State::Run;
                    th.slot = 0;
                    th.started = false;
                    getcontext(&th.ctx);
                    th.ctx.uc_stack.ss_sp = stacks[t];
                    th.ctx.uc_stack.ss_size = STACK_BYTES;
                    th.ctx.uc_link = nullptr;
                    makecontext(&th.ctx, fiber_main, 0);
                }
                // Every other block (and a one-block grid every other
                // launch) runs its threads last to first, so a read of
                // another thread's write that lacks a barrier between them
                // sees the write missing in one order or the other.
                const bool reverse = (bx + by + bz + launches) & 1u;
                for (;;) {
                    bool ran = false, live = false;
                    for (unsigned i = 0; i < nthreads; i++) {
                        const unsigned t = reverse ? nthreads - 1 - i : i;
                        if (threads[t].state != State::Run) continue;
                        ran = true;
                        current = &threads[t];
                        if (!_setjmp(scheduler)) {
                            if (current->started) _longjmp(current->at, 1);
                            current->started = true;
                            setcontext(&current->ctx);
                        }
                    }
                    for (unsigned t = 0; t < nthreads && !live; t++)
                        live = threads[t].state != State::Done;
                    if (!live) break;
                    if (!ran && !release(l->error, l->error_cap)) return 1;
                    if (ran) continue;
                }
            }
    return 0;
}

template <typename... A, size_t... I>
inline void call_with(void (*k)(A...), void** params, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(params[I])...);
}

template <typename... A>
inline int launch(void (*k)(A...), const Launch* l, void** params) {
    struct Call {
        void (*k)(A...);
        void** params;
    } call{k, params};
    body = [](void* c) {
        Call* p = static_cast<Call*>(c);
        call_with(p->k, p->params, std::index_sequence_for<A...>{});
    };
    body_arg = &call;
    return run_grid(l);
}

template <typename... A>
inline int param_sizes(void (*)(A...), size_t* sizes, int max) {
    const size_t s[] = {sizeof(A)..., 0};
    const int n = (int)sizeof...(A);
    for (int i = 0; i < n && i < max; i++) sizes[i] = s[i];
    return n;
}

}  // namespace emu
