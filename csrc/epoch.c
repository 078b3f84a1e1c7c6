/* Deadlines: the epoch ticker, per-call deadlines, interrupts from other threads, and the
 * check that a thread's stack has room for the wasm stack.
 *
 * The engine is built with epoch interruption: compiled code checks the engine's epoch at
 * function entries and loop back-edges. One ticker thread advances the epoch every
 * EPOCH_TICK_NS while any VM exists. Each top-level guest call arms a deadline one tick
 * ahead; each time it is reached, wasmtime calls epoch_callback on the guest's own thread,
 * which traps the call if the VM was interrupted or the call has run longer than its
 * deadline (less the time spent in Python callbacks), and otherwise waits one more tick:
 * a call is stopped at most one tick (plus scheduling delay) after its deadline. A runaway guest is therefore
 * stopped within one tick of its deadline, and a guest with no deadline can still be
 * stopped by pw_vm_interrupt (Host.close with a timeout).
 *
 * Ticks are needed only while guest code runs, so the ticker sleeps once no guest call
 * has begun for IDLE_TICKS ticks (an idle server does not wake a thousand times a second),
 * and the next call wakes it. Every call, and every tick of a running one, sets
 * epoch_busy; the ticker clears it at each tick. The handshake is Dekker's, on seq_cst
 * atomics: the ticker announces ticker_idle and then reads epoch_busy; a call sets
 * epoch_busy and then reads ticker_idle; one of the two sees the other, so a call never
 * runs while the ticker sleeps. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define EPOCH_TICK_NS 1000000u /* 1 ms */
#define IDLE_TICKS 100u         /* ticks without a guest call before the ticker sleeps */

/* The ticker's state, guarded by tick_lock: which engine it ticks, how many VMs need it
 * (it sleeps on tick_cond when none do), and whether it must end. Touched by the threads
 * that create and free engines and VMs, and by the ticker thread. */
static pthread_mutex_t tick_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t tick_cond = PTHREAD_COND_INITIALIZER;
static wasm_engine_t *tick_engine;
static size_t tick_users;
static int tick_stop, tick_running;
static pthread_t tick_thread;

/* The idle handshake (see the top of the file). epoch_busy: set by any thread making a
 * guest call, cleared by the ticker. ticker_idle: set by the ticker before it sleeps,
 * cleared by whoever wakes it (under tick_lock) or by the ticker itself. */
_Atomic int epoch_busy;
static _Atomic int ticker_idle;

void epoch_wake(void) {
    atomic_store(&epoch_busy, 1);
    if (!atomic_load(&ticker_idle)) return;
    pthread_mutex_lock(&tick_lock);
    if (atomic_load(&ticker_idle)) {
        atomic_store(&ticker_idle, 0);
        pthread_cond_broadcast(&tick_cond);
    }
    pthread_mutex_unlock(&tick_lock);
    pw_signals_verify(); /* the sleeping ticker did not look: a handler installed meanwhile
                          * goes behind ours before this call enters the guest */
}

uint64_t epoch_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t thread_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec + 1; /* never 0 */
}

static void *ticker(void *arg) {
    (void)arg;
    unsigned quiet = 0; /* ticks in a row without a guest call */
    pthread_mutex_lock(&tick_lock);
    for (;;) {
        while (!tick_users && !tick_stop) pthread_cond_wait(&tick_cond, &tick_lock);
        if (tick_stop) break;
        if (quiet >= IDLE_TICKS) { /* sleep until a call begins (epoch_wake) */
            atomic_store(&ticker_idle, 1);
            if (!atomic_load(&epoch_busy))
                while (atomic_load(&ticker_idle) && !tick_stop) pthread_cond_wait(&tick_cond, &tick_lock);
            atomic_store(&ticker_idle, 0);
            quiet = 0;
            continue;
        }
        pthread_mutex_unlock(&tick_lock);
        struct timespec ts = {0, EPOCH_TICK_NS};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
        }
        /* nanosleep may oversleep on a busy machine; the deadline check reads the clock,
         * so a late tick only delays it. */
        pw_signals_verify(); /* a handler installed since the last tick goes behind ours */
        pthread_mutex_lock(&tick_lock);
        if (tick_engine) WT.engine_increment_epoch(tick_engine); /* any thread may */
        quiet = atomic_exchange(&epoch_busy, 0) ? 0 : quiet + 1;
    }
    pthread_mutex_unlock(&tick_lock);
    return NULL;
}

void epoch_configure(wasm_config_t *cfg) {
    WT.config_epoch_interruption_set(cfg, true);
    /* The wasm stack must stay well inside any thread's real stack: without signal
     * handlers an overflow of the real stack is a crash, of the wasm stack a trap. */
    WT.config_max_wasm_stack_set(cfg, PW_WASM_STACK);
}

void epoch_engine_start(wasm_engine_t *e) {
    pthread_mutex_lock(&tick_lock);
    if (!tick_engine) tick_engine = e;
    pthread_mutex_unlock(&tick_lock);
}

void epoch_engine_stop(wasm_engine_t *e) {
    pthread_mutex_lock(&tick_lock);
    int join = 0;
    if (tick_engine == e) {
        tick_engine = NULL;
        if (tick_running) {
            tick_stop = 1;
            join = 1;
            pthread_cond_signal(&tick_cond);
        }
    }
    pthread_mutex_unlock(&tick_lock);
    if (join) {
        pthread_join(tick_thread, NULL);
        pthread_mutex_lock(&tick_lock);
        tick_running = tick_stop = 0;
        pthread_mutex_unlock(&tick_lock);
    }
}

static wasmtime_error_t *epoch_callback(wasmtime_context_t *cx, void *data, uint64_t *delta,
                                        wasmtime_update_deadline_kind_t *kind) {
    (void)cx;
    pw_vm *vm = data;
    *kind = WASMTIME_UPDATE_DEADLINE_CONTINUE;
    *delta = 1;
    epoch_wake(); /* a call still running keeps the ticker awake */
    lock_yield(); /* a call this long runs without the embedding's lock (pw_set_lock_yield) */
    if (atomic_load_explicit(&vm->interrupt, memory_order_acquire))
        return WT.error_new("interrupted: the host is shutting down");
    if (!vm->call_deadline_ms) return NULL;
    /* A CPU deadline. The wall clock (cheap) says when to look; this thread's CPU time,
     * counted from the call's first tick (a syscall, made only by calls that last that
     * long), says whether the guest really ran that long or was only descheduled, or
     * waiting for the GIL in a Python callback. Python's own CPU time in callbacks (log
     * handlers, foreign functions, outbound calls) is not the guest's, up to one more
     * deadline's worth: a guest that logs without end is still stopped. */
    uint64_t now = epoch_now_ns();
    if (!vm->call_cpu0_ns) {
        /* The first tick comes at most one tick after the call began (later only if the
         * ticker itself was descheduled), so one tick less the time spent in Python is
         * credited as guest time before it. So no clock is read when a call begins
         * (about 20 ns each, eight calls per request), and a thread descheduled right
         * after entering the guest is never charged for that wait: a call is stopped no
         * earlier than one tick before its deadline, and late only by as much as the
         * ticker was. */
        vm->call_tick0_ns = now;
        vm->call_cpu0_ns = thread_cpu_ns();
        vm->call_pre_ns = vm->paused_ns < EPOCH_TICK_NS ? EPOCH_TICK_NS - vm->paused_ns : 0;
        vm->call_paused0_ns = vm->paused_ns;
    }
    uint64_t limit = vm->call_deadline_ms * 1000000u;
    if (now - vm->call_tick0_ns + vm->call_pre_ns <= limit) return NULL;
    uint64_t cpu = thread_cpu_ns() - vm->call_cpu0_ns;
    uint64_t py = vm->paused_ns - vm->call_paused0_ns;
    if (py > cpu) py = cpu;
    uint64_t guest = vm->call_pre_ns + cpu - py;
    if (guest > limit || guest + py > 2 * limit) {
        char msg[96];
        snprintf(msg, sizeof msg, "deadline exceeded: the call ran longer than %llu ms",
                 (unsigned long long)vm->call_deadline_ms);
        return WT.error_new(msg);
    }
    return NULL;
}

void epoch_vm_attach(pw_vm *vm) {
    pw_signals_verify(); /* a new VM is rare next to its calls: check the handlers now */
    WT.store_epoch_deadline_callback(vm->store, epoch_callback, vm, NULL);
    pthread_mutex_lock(&tick_lock);
    tick_users++;
    if (!tick_running && tick_engine &&
        pthread_create(&tick_thread, NULL, ticker, NULL) == 0)
        tick_running = 1;
    pthread_cond_signal(&tick_cond);
    pthread_mutex_unlock(&tick_lock);
}

void epoch_vm_detach(pw_vm *vm) {
    (void)vm;
    pthread_mutex_lock(&tick_lock);
    if (tick_users) tick_users--;
    pthread_mutex_unlock(&tick_lock);
}

/* The calling thread's lowest usable stack address (its owner thread's, for a VM). */
uintptr_t epoch_stack_low(void) {
    pthread_attr_t attr;
    void *addr = NULL;
    size_t size = 0;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        pthread_attr_getstack(&attr, &addr, &size);
        pthread_attr_destroy(&attr);
    }
    return (uintptr_t)addr;
}

int epoch_stack_fail(pw_vm *vm, char *why, size_t whylen) {
    char here;
    uintptr_t sp = (uintptr_t)&here;
    size_t have = sp > vm->stack_lo ? sp - vm->stack_lo : 0;
    snprintf(why, whylen,
             "this thread's stack has %zu KiB left; a guest call needs %u KiB (the wasm "
             "stack and the host frames below it): give the thread a bigger stack",
             have >> 10, (PW_WASM_STACK + PW_STACK_MARGIN) >> 10);
    return -1;
}

void pw_vm_interrupt(pw_vm *vm) { atomic_store_explicit(&vm->interrupt, 1, memory_order_release); }
