/* What the two files of pyproxywasm._fast share: StreamBase's layout, the C core's entry
 * points (function pointers handed over once by pyproxywasm.http, so the extension links
 * against nothing), and the field helper. _fast.c: the per-event methods and the module;
 * _fast_exchange.c: the adapters' exchange (ASGI / WSGI in and out). */
#ifndef PYPROXYWASM_FAST_H
#define PYPROXYWASM_FAST_H

#define PY_SSIZE_T_CLEAN
#define Py_LIMITED_API 0x030A0000 /* the stable ABI of 3.10: one abi3 wheel, like _core */
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int (*start_fn)(void *vm, uint32_t root, const uint8_t *h, size_t len, int nflat, int eos,
                        uint32_t *out_id);
typedef int (*headers_fn)(void *vm, uint32_t id, int dir, const uint8_t *h, size_t len, int nflat,
                          int eos);
typedef int (*data_fn)(void *vm, uint32_t id, int dir, const uint8_t *d, size_t len, int eos);
typedef int (*finish_fn)(void *vm, uint32_t id);
typedef int (*new_fn)(void *vm, uint32_t root, uint32_t *out_id);
typedef int (*read_fn)(void *vm, uint32_t id, int what, const uint8_t **out, size_t *len);
typedef int (*prop_fn)(void *vm, uint32_t ctx, const uint8_t *path, size_t path_len,
                       const uint8_t *value, size_t value_len);
typedef int (*closed_fn)(void *vm);
typedef void (*set_yield_fn)(void (*yield)(void));

/* Set once by init() at import (under the GIL), read-only afterwards (_fast.c). */
extern start_fn core_start;
extern headers_fn core_headers;
extern data_fn core_data;
extern finish_fn core_finish;
extern new_fn core_new;
extern read_fn core_read;
extern prop_fn core_set_prop;
extern int malformed; /* -PW_ERR: the flat form refused */

#define STACK_BYTES 2048

/* ---- the GIL across a core call (_fast.c) -----------------------------------------------
 * Releasing and retaking the GIL costs about 400 instructions, more than a minimal
 * filter's guest call, five times per request. So while at most one thread runs VMs (an
 * asyncio server, a serve worker; set_hold_gil, from pyproxywasm.host), a call into the
 * core keeps it; the core hands it back through yield_gil (pw_set_lock_yield) once a guest
 * call has run for a tick (1 ms), before a hostcall blocks and before any Python callback
 * (so that a callback calling the core again, through cffi or CORE_CALL, never finds
 * gil_held set while it does not hold the GIL), and CORE_CALL takes it back when the core
 * returns. With VMs on more threads, every call releases it, so their guest code runs in
 * parallel. Nested calls save and restore the thread's state. */
extern int hold_gil; /* read and written under the GIL */
extern __attribute__((tls_model("initial-exec"))) _Thread_local int gil_held;
extern __attribute__((tls_model("initial-exec"))) _Thread_local PyThreadState *gil_saved;

#define CORE_CALL(...)                                                                     \
    do {                                                                                   \
        int held0_ = gil_held; /* a call nested in a Python callback of an outer one */    \
        PyThreadState *saved0_ = gil_saved;                                                \
        gil_saved = NULL;                                                                  \
        if (hold_gil) {                                                                    \
            gil_held = 1;                                                                  \
            __VA_ARGS__;                                                                   \
            if (gil_saved) PyEval_RestoreThread(gil_saved);                                \
        } else {                                                                           \
            gil_held = 0; /* not the outer call's to give up from in here */               \
            Py_BEGIN_ALLOW_THREADS __VA_ARGS__;                                            \
            Py_END_ALLOW_THREADS                                                           \
        }                                                                                  \
        gil_held = held0_;                                                                 \
        gil_saved = saved0_;                                                               \
    } while (0)

typedef struct {
    PyObject_HEAD
    unsigned long long vma; /* the pw_vm's address (_vma) */
    unsigned int id;        /* the stream's context id, 0 until the first event (_id) */
    unsigned int root;      /* its root context id (_root) */
    int flags;              /* the core's PW_S_* flags after the last event */
    PyObject *plugin, *vm, *vmobj;
} Stream;

/* One field's bytes, borrowed from a str (UTF-8) or bytes object; -1: neither. */
int field(PyObject *o, const char **p, Py_ssize_t *n);

/* _fast_exchange.c: its module state (interned names), set up at import; its module
 * function and StreamBase methods. */
int exchange_init(void);
PyObject *set_helpers(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *s_asgi_start(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *s_asgi_app_scope(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *s_asgi_respond(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *s_wsgi_start(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *s_wsgi_app_environ(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *s_wsgi_respond(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

#define EXCHANGE_METHODS                                                                   \
    {"asgi_start", (PyCFunction)(void (*)(void))s_asgi_start, METH_FASTCALL, NULL},        \
    {"asgi_app_scope", (PyCFunction)(void (*)(void))s_asgi_app_scope, METH_FASTCALL, NULL}, \
    {"asgi_respond", (PyCFunction)(void (*)(void))s_asgi_respond, METH_FASTCALL, NULL},    \
    {"wsgi_start", (PyCFunction)(void (*)(void))s_wsgi_start, METH_FASTCALL, NULL},        \
    {"wsgi_app_environ", (PyCFunction)(void (*)(void))s_wsgi_app_environ, METH_FASTCALL, NULL}, \
    {"wsgi_respond", (PyCFunction)(void (*)(void))s_wsgi_respond, METH_FASTCALL, NULL},

#endif
