/* Signal-based traps that later signal handlers cannot turn into host crashes.
 *
 * With signals-based traps, compiled guest code has no explicit bounds checks: an access
 * outside linear memory faults (SIGSEGV), a trap instruction raises SIGILL, and wasmtime's
 * handler, installed when the first such engine is made, turns the fault into a trap.
 * Anything that installs its own handler afterwards — Python's faulthandler (pytest
 * enables it), signal.signal, another extension — sits in front of wasmtime's and sees the
 * fault first. faulthandler would print a fatal error, restore the previous handler and
 * raise the signal again from inside its handler, where the faulting context is lost: the
 * host dies of a guest trap.
 *
 * So the core keeps its own handler (`front`) in front:
 *  - a fault the kernel raises on a thread that is running guest code goes to wasmtime's
 *    handler, which either resumes at the trap or hands the fault on to what was there
 *    before wasmtime (a real host crash still crashes);
 *  - anything else goes to the handler that displaced ours (once; a faulthandler
 *    installed later still reports a real crash), or else to wasmtime's chain;
 *  - the signal raised again by a displaced handler on a thread running guest code (the
 *    faulthandler case above, between a new handler's arrival and our check) is
 *    swallowed and `front` is put back: the faulting instruction runs again, now reaches
 *    wasmtime's handler and traps. Such a handler still sees that one fault first
 *    (faulthandler prints its report), but the host lives.
 * sig_verify() puts `front` back in front when something displaced it and remembers the
 * displacer; the epoch ticker runs it every tick (epoch.c) and the engine and the Python
 * layer run it when they start. A sigaction query costs about 0.4 µs here (a syscall in
 * this VM), so it is not done per guest call: guest calls run with the GIL released, so a
 * handler installed by another Python thread during a call could not be caught by a
 * per-call check anyway.
 *
 * What is not covered: a handler that neither chains nor re-raises (SIG_DFL put back by
 * faulthandler.disable(), a Python-level signal.signal(SIGSEGV, ...)) installed less than
 * one tick (1 ms) before a guest traps. PYPROXYWASM_SIGNALS=0 in the environment selects
 * explicit checks instead (no handlers at all). */
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define NSIGS 4
static const int sigs[NSIGS] = {SIGSEGV, SIGILL, SIGFPE, SIGBUS};

/* Process-wide state of the chain, written under verify_lock by sig_capture (the first
 * signals engine, on the thread that makes it) and sig_verify (any thread, the ticker);
 * read by the handler on any thread. A displacer is published with `displaced_set`
 * (release) after its struct is written, and only ever replaced by a newer displacer. */
static pthread_mutex_t verify_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sigaction wt_sa[NSIGS];    /* wasmtime's handler, as installed */
static int wt_has[NSIGS];                /* wasmtime handles this signal */
static struct sigaction displaced[NSIGS];
static _Atomic int displaced_set[NSIGS];
static _Atomic int handoffs;     /* real crashes handed to a displacer: at most once */
static _Atomic uint64_t repairs; /* times `front` was put back (pw_signals_repairs) */
static int enabled = -1;         /* signals-based traps in use; decided once (sig_enabled) */

/* Guest calls on this thread (vm.c wraps every call): initial-exec so that the handler's
 * read never allocates. */
__attribute__((tls_model("initial-exec"))) _Thread_local int sig_in_guest;

static int slot(int sig) {
    for (int i = 0; i < NSIGS; i++)
        if (sigs[i] == sig) return i;
    return -1;
}

static void front(int sig, siginfo_t *info, void *uc);

static void install_front(int i) {
    struct sigaction sa = wt_sa[i];
    sa.sa_sigaction = front;
    sa.sa_flags |= SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigaction(sigs[i], &sa, NULL); /* async-signal-safe */
}

static void deliver(const struct sigaction *to, int sig, siginfo_t *info, void *uc) {
    if (to->sa_flags & SA_SIGINFO) {
        to->sa_sigaction(sig, info, uc);
    } else if (to->sa_handler == SIG_DFL || to->sa_handler == SIG_IGN) {
        /* The default action: on return the fault runs again and ends the process. */
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        sigaction(sig, &dfl, NULL);
        if (info->si_code <= 0) raise(sig);
    } else {
        to->sa_handler(sig);
    }
}

static void front(int sig, siginfo_t *info, void *uc) {
    int i = slot(sig);
    if (i < 0 || !wt_has[i]) return;
    int from_kernel = info && info->si_code > 0;
    if (sig_in_guest) {
        if (from_kernel) {
            deliver(&wt_sa[i], sig, info, uc); /* a trap, or wasmtime's own chain */
            return;
        }
        /* Raised again by a handler that displaced ours and saw the fault first: put
         * ours back; returning re-runs the faulting instruction, which now traps. */
        install_front(i);
        atomic_fetch_add_explicit(&repairs, 1, memory_order_relaxed);
        return;
    }
    if (atomic_load_explicit(&displaced_set[i], memory_order_acquire) &&
        atomic_fetch_add(&handoffs, 1) == 0) {
        deliver(&displaced[i], sig, info, uc); /* e.g. faulthandler reports the crash */
        return;
    }
    deliver(&wt_sa[i], sig, info, uc);
}

int sig_enabled(void) {
    if (enabled < 0) { /* the first engine, before any thread could ask */
        const char *env = getenv("PYPROXYWASM_SIGNALS");
        enabled = !(env && env[0] == '0');
    }
    return enabled;
}

void sig_capture(void) {
    pthread_mutex_lock(&verify_lock);
    for (int i = 0; i < NSIGS; i++) {
        struct sigaction cur;
        if (wt_has[i] || sigaction(sigs[i], NULL, &cur) != 0) continue;
        if (!(cur.sa_flags & SA_SIGINFO) || cur.sa_sigaction == front) continue;
        wt_sa[i] = cur; /* what the engine just installed (or an earlier engine did) */
        wt_has[i] = 1;
        install_front(i);
    }
    pthread_mutex_unlock(&verify_lock);
}

int pw_signals_verify(void) {
    if (enabled != 1) return 0;
    int fixed = 0;
    pthread_mutex_lock(&verify_lock);
    for (int i = 0; i < NSIGS; i++) {
        struct sigaction cur;
        if (!wt_has[i] || sigaction(sigs[i], NULL, &cur) != 0) continue;
        if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == front) continue;
        int is_wt = (cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == wt_sa[i].sa_sigaction;
        int is_default = !(cur.sa_flags & SA_SIGINFO) &&
                         (cur.sa_handler == SIG_DFL || cur.sa_handler == SIG_IGN);
        if (!is_wt && !is_default) { /* a handler to keep for real crashes */
            atomic_store_explicit(&displaced_set[i], 0, memory_order_release);
            displaced[i] = cur;
            atomic_store_explicit(&displaced_set[i], 1, memory_order_release);
        }
        install_front(i);
        fixed++;
    }
    pthread_mutex_unlock(&verify_lock);
    if (fixed) atomic_fetch_add_explicit(&repairs, 1, memory_order_relaxed);
    return fixed;
}

uint64_t pw_signals_repairs(void) { return atomic_load_explicit(&repairs, memory_order_relaxed); }

int pw_signals_enabled(void) { return enabled == 1; }
