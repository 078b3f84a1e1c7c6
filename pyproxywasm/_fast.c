/* The per-event hot path of HttpStream, as a small CPython extension: StreamBase, whose C
 * methods take the caller's header list as it is (str or bytes pairs), write the flat form
 * "k\0v\0k\0v" straight from the objects' own buffers into one C buffer (no per-item Python
 * objects) and call the C core (CORE_CALL, _fast.h: with the GIL released, or kept while
 * one thread runs VMs): one call per event, no Python frame.
 *
 * The core itself is reached through function pointers that pyproxywasm.http hands over
 * once (from the cffi module, so this file links against nothing). Anything this path does
 * not take — a Mapping, bytearray or memoryview items, something that is not a pair, a str
 * with lone surrogates — goes to the subclass's general (cffi) methods;
 * a field holding a NUL makes the core refuse the flat form (its separator count), and the
 * caller retries with the pairs format, which says exactly what was meant.
 *
 * The adapters' whole exchange (an ASGI scope or WSGI environ in, the app's request out,
 * the app's response in, the client's out) is _fast_exchange.c, on the same StreamBase. */
#include "_fast.h"

/* Set once by init() at import (under the GIL), read-only afterwards. */
start_fn core_start;
headers_fn core_headers;
data_fn core_data;
finish_fn core_finish;
new_fn core_new;
read_fn core_read;
prop_fn core_set_prop;
static closed_fn core_vm_closed;

/* The GIL across a core call (_fast.h). hold_gil: set by set_hold_gil under the GIL. */
int hold_gil;
__attribute__((tls_model("initial-exec"))) _Thread_local int gil_held;
__attribute__((tls_model("initial-exec"))) _Thread_local PyThreadState *gil_saved;

/* The core's yield (pw_set_lock_yield), on the thread in the core: the GIL goes if this
 * thread's CORE_CALL holds it; CORE_CALL takes it back. */
static void yield_gil(void) {
    if (gil_held) {
        gil_held = 0;
        gil_saved = PyEval_SaveThread();
    }
}

/* set_hold_gil(flag): whether core calls keep the GIL (at most one thread runs VMs);
 * holds_gil(): the current choice. */
static PyObject *set_hold_gil(PyObject *self, PyObject *flag) {
    (void)self;
    int t = PyObject_IsTrue(flag);
    if (t < 0) return NULL;
    hold_gil = t;
    Py_RETURN_NONE;
}

static PyObject *holds_gil(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyBool_FromLong(hold_gil);
}

/* One field's bytes, borrowed from the object (valid while the caller holds it). */
int field(PyObject *o, const char **p, Py_ssize_t *n) {
    if (PyUnicode_CheckExact(o)) {
        *p = PyUnicode_AsUTF8AndSize(o, n); /* ASCII: the object's own data, no copy */
        if (!*p) {
            PyErr_Clear(); /* lone surrogates: the general encoder escapes them */
            return -1;
        }
        return 0;
    }
    if (PyBytes_CheckExact(o)) {
        char *b;
        if (PyBytes_AsStringAndSize(o, &b, n)) {
            PyErr_Clear();
            return -1;
        }
        *p = b;
        return 0;
    }
    return -1;
}

/* Item i of an exact list or tuple (borrowed). */
static inline PyObject *item(PyObject *seq, int is_list, Py_ssize_t i) {
    return is_list ? PyList_GetItem(seq, i) : PyTuple_GetItem(seq, i);
}

/* ---- pairs sent again -----------------------------------------------------------------
 * Code that sends the same headers again mostly sends the same tuple objects: a literal
 * pair is a constant of the code that builds the list, and a list kept (at module level,
 * in a test's fixture) holds the same tuples. A tuple of two exact str or bytes can never
 * change, and neither can the UTF-8 form of its str items (a str keeps the buffer
 * PyUnicode_AsUTF8AndSize returned for its lifetime); so for a tuple seen before (the
 * same object, which this cache keeps alive so that its address cannot be reused) the
 * two fields are read from here, without the four item reads, the type checks and the
 * UTF-8 lookups: about 150 instructions a pair down to about 15. A miss costs about 40
 * (a reference and a few stores, and when it evicts, a decref: of a tuple of str or
 * bytes, which runs no Python code). Two ways per set, sets chosen by a multiplicative hash of the tuple's
 * address, so that a request's ten or twenty pairs seldom evict one another (direct-mapped,
 * two of ten pairs share a slot about half the time); only small pairs are kept, so it
 * holds at most 2 * PAIR_SETS pairs of at most PAIR_MAX bytes alive. Read and written only
 * by encode(), which runs with the GIL held. */
#define PAIR_SETS 64 /* a power of two: the hash's top 6 bits pick the set */
#define PAIR_MAX 256 /* name + value bytes: a larger pair is encoded each time */
typedef struct {
    PyObject *pair; /* a strong reference, or NULL */
    const char *k, *v;
    Py_ssize_t kl, vl;
} pair_slot;
static pair_slot pair_cache[PAIR_SETS][2];

static inline pair_slot *pair_set_of(PyObject *pair) {
    return pair_cache[((uint64_t)(uintptr_t)pair * 0x9E3779B97F4A7C15u) >> 58];
}

/* Keeps a tuple pair's fields in its set's first way; the second way's pair goes (the
 * first's moves there), decref'd once the set is rewritten. */
static inline void pair_keep(pair_slot *set, PyObject *pair, const char *k, Py_ssize_t kl,
                             const char *v, Py_ssize_t vl) {
    PyObject *old = set[1].pair;
    Py_INCREF(pair);
    set[1] = set[0];
    set[0] = (pair_slot){pair, k, v, kl, vl};
    Py_XDECREF(old);
}

/* Encodes the header sequence into *out (the stack buffer, or a malloc'd one when it does
 * not fit); 1 done, 0 not this path's input, -1 out of memory (exception set). The items
 * stay alive while this runs: the caller holds the sequence, and no Python code runs
 * here (a decref in pair_keep frees at most a tuple of str or bytes not in it). */
static int encode(PyObject *items, char *stack, char **out, size_t *len, int *count) {
    int is_list = PyList_CheckExact(items);
    if (!is_list && !PyTuple_CheckExact(items)) return 0;
    Py_ssize_t n = is_list ? PyList_Size(items) : PyTuple_Size(items);
    const char *ptr[2 * 64];
    Py_ssize_t lens[2 * 64];
    if (n > 64) return 0; /* a long list: the general encoder */
    size_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = item(items, is_list, i);
        const char **p = &ptr[2 * i];
        Py_ssize_t *l = &lens[2 * i];
        pair_slot *set = pair_set_of(pair), *c = set[0].pair == pair ? &set[0] : &set[1];
        if (c->pair == pair) {
            p[0] = c->k, p[1] = c->v, l[0] = c->kl, l[1] = c->vl;
        } else {
            int pl = PyList_CheckExact(pair);
            if (!pl && !PyTuple_CheckExact(pair)) return 0;
            if ((pl ? PyList_Size(pair) : PyTuple_Size(pair)) != 2) return 0;
            if (field(item(pair, pl, 0), &p[0], &l[0]) || field(item(pair, pl, 1), &p[1], &l[1]))
                return 0;
            if (!pl && l[0] + l[1] <= PAIR_MAX) pair_keep(set, pair, p[0], l[0], p[1], l[1]);
        }
        total += (size_t)l[0] + (size_t)l[1] + 2;
    }
    char *buf = stack;
    if (total > STACK_BYTES) {
        buf = malloc(total);
        if (!buf) {
            PyErr_NoMemory();
            return -1;
        }
    }
    char *d = buf;
    for (Py_ssize_t i = 0; i < 2 * n; i++) {
        memcpy(d, ptr[i], (size_t)lens[i]);
        d += lens[i];
        *d++ = 0;
    }
    *out = buf;
    *len = total ? total - 1 : 0; /* no NUL after the last value */
    *count = (int)n;
    return 1;
}

/* init(start, headers, data, finish, new, read, set_property, vm_closed, set_lock_yield):
 * the core's function addresses, as ints; the last one is given yield_gil at once. */
static PyObject *init(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "init(start, headers, data, finish, new, read, set_property, "
                                         "vm_closed, set_lock_yield)");
        return NULL;
    }
    void *p[9];
    for (int i = 0; i < 9; i++) {
        p[i] = PyLong_AsVoidPtr(args[i]);
        if (!p[i]) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "null function");
            return NULL;
        }
    }
    core_start = (start_fn)p[0];
    core_headers = (headers_fn)p[1];
    core_data = (data_fn)p[2];
    core_finish = (finish_fn)p[3];
    core_new = (new_fn)p[4];
    core_read = (read_fn)p[5];
    core_set_prop = (prop_fn)p[6];
    core_vm_closed = (closed_fn)p[7];
    ((set_yield_fn)p[8])(yield_gil);
    Py_RETURN_NONE;
}

/* ---- StreamBase: HttpStream's events as C methods --------------------------------------
 * pyproxywasm.http.HttpStream subclasses this type: its hot methods (the five events)
 * run here with no Python frame; everything else, and every case this path does not take,
 * is the subclass's Python (_general_headers, _general_data, _general_finish, _raise,
 * _abandoned). */
#include <structmember.h>


/* Set once by set_constants() at import, read-only afterwards. */
static PyObject *action_continue, *action_pause, *action_dropped;
static int stopped_mask[2], done_flag, local_flag, closed_code;
int malformed;

static PyObject *set_constants(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "set_constants(continue, pause, dropped, req_stop, "
                                         "resp_stop, done, local, malformed, closed)");
        return NULL;
    }
    Py_INCREF(args[0]);
    Py_INCREF(args[1]);
    Py_INCREF(args[2]);
    action_continue = args[0];
    action_pause = args[1];
    action_dropped = args[2];
    stopped_mask[0] = (int)PyLong_AsLong(args[3]);
    stopped_mask[1] = (int)PyLong_AsLong(args[4]);
    done_flag = (int)PyLong_AsLong(args[5]);
    local_flag = (int)PyLong_AsLong(args[6]);
    malformed = (int)PyLong_AsLong(args[7]);
    closed_code = (int)PyLong_AsLong(args[8]);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

/* (x[, end_stream]) with end_stream also by keyword. */
static int event_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject **x,
                      int *eos) {
    Py_ssize_t nkw = kwnames ? PyTuple_Size(kwnames) : 0;
    PyObject *e = NULL;
    if (nargs < 1 || nargs > 2 || (nkw && nargs + nkw > 2)) goto bad;
    *x = args[0];
    if (nargs == 2) e = args[1];
    if (nkw) {
        PyObject *k = PyTuple_GetItem(kwnames, 0);
        if (!k || !PyUnicode_Check(k) || PyUnicode_CompareWithASCIIString(k, "end_stream"))
            goto bad;
        e = args[nargs];
    }
    *eos = e ? PyObject_IsTrue(e) : 0;
    return *eos < 0 ? -1 : 0;
bad:
    PyErr_SetString(PyExc_TypeError, "expected (value, end_stream=False)");
    return -1;
}

/* An event's outcome; `dropped`: a response event after the plugin's local response
 * (Envoy drops it: Action.DROPPED). */
static PyObject *done(Stream *s, int f, int dir, int dropped) {
    if (f < 0) return PyObject_CallMethod((PyObject *)s, "_raise", "i", f);
    s->flags = f;
    PyObject *a = dropped ? action_dropped : (f & stopped_mask[dir]) ? action_pause : action_continue;
    Py_INCREF(a);
    return a;
}

static PyObject *headers_event(Stream *s, int dir, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames) {
    PyObject *h;
    int eos;
    if (event_args(args, nargs, kwnames, &h, &eos)) return NULL;
    char stack[STACK_BYTES], *buf;
    size_t len;
    int count, rc = (dir == 0 || s->id) ? encode(h, stack, &buf, &len, &count) : 0;
    if (rc < 0) return NULL;
    if (rc > 0) {
        int f, dropped = dir == 1 && (s->flags & local_flag);
        uint32_t id = s->id;
        void *vm = (void *)(uintptr_t)s->vma;
        if (id)
            CORE_CALL(f = core_headers(vm, id, dir, (const uint8_t *)buf, len, count, eos));
        else
            CORE_CALL(f = core_start(vm, s->root, (const uint8_t *)buf, len, count, eos, &id));
        if (buf != stack) free(buf);
        s->id = id;
        if (f != malformed) return done(s, f, dir, dropped);
    }
    return PyObject_CallMethod((PyObject *)s, "_general_headers", "iOO", dir, h, eos ? Py_True : Py_False);
}

static PyObject *data_event(Stream *s, int dir, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames) {
    PyObject *d;
    int eos;
    if (event_args(args, nargs, kwnames, &d, &eos)) return NULL;
    char *b;
    Py_ssize_t bn;
    if (!s->id || !PyBytes_CheckExact(d) || PyBytes_AsStringAndSize(d, &b, &bn))
        return PyObject_CallMethod((PyObject *)s, "_general_data", "iOO", dir, d, eos ? Py_True : Py_False);
    const uint8_t *p = (const uint8_t *)b;
    size_t n = (size_t)bn;
    void *vm = (void *)(uintptr_t)s->vma;
    int f, dropped = dir == 1 && (s->flags & local_flag);
    CORE_CALL(f = core_data(vm, s->id, dir, p, n, eos));
    return done(s, f, dir, dropped);
}

static PyObject *s_req_headers(PyObject *s, PyObject *const *a, Py_ssize_t n, PyObject *kw) {
    return headers_event((Stream *)s, 0, a, n, kw);
}
static PyObject *s_resp_headers(PyObject *s, PyObject *const *a, Py_ssize_t n, PyObject *kw) {
    return headers_event((Stream *)s, 1, a, n, kw);
}
static PyObject *s_req_body(PyObject *s, PyObject *const *a, Py_ssize_t n, PyObject *kw) {
    return data_event((Stream *)s, 0, a, n, kw);
}
static PyObject *s_resp_body(PyObject *s, PyObject *const *a, Py_ssize_t n, PyObject *kw) {
    return data_event((Stream *)s, 1, a, n, kw);
}

static PyObject *s_finish(PyObject *self, PyObject *unused) {
    (void)unused;
    Stream *s = (Stream *)self;
    if (s->flags & done_flag) Py_RETURN_NONE;
    if (!s->id) return PyObject_CallMethod(self, "_general_finish", NULL);
    void *vm = (void *)(uintptr_t)s->vma;
    int f;
    CORE_CALL(f = core_finish(vm, s->id));
    if (f < 0 && f != closed_code) return PyObject_CallMethod(self, "_raise", "i", f);
    s->flags |= done_flag;
    Py_RETURN_NONE;
}

/* Dropped without finish(): the subclass ends it as Envoy ends a destroyed stream. */
static void s_finalize(PyObject *self) {
    Stream *s = (Stream *)self;
    if (!s->id || (s->flags & done_flag)) return;
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyObject *r = PyObject_CallMethod(self, "_abandoned", NULL);
    if (!r) PyErr_WriteUnraisable(self);
    Py_XDECREF(r);
    PyErr_Restore(et, ev, tb);
}

static int s_traverse(PyObject *self, visitproc visit, void *arg) {
    Stream *s = (Stream *)self;
    Py_VISIT(s->plugin);
    Py_VISIT(s->vm);
    Py_VISIT(s->vmobj);
    Py_VISIT(Py_TYPE(self)); /* a heap-type base visits the type for subtype_traverse */
    return 0;
}

static int s_clear(PyObject *self) {
    Stream *s = (Stream *)self;
    Py_CLEAR(s->plugin);
    Py_CLEAR(s->vm);
    Py_CLEAR(s->vmobj);
    return 0;
}

/* Instances are HttpStream's (a Python subclass): its subtype_dealloc has run the
 * finalizer; this frees what the base holds, and drops the instance's reference to its
 * type, which subtype_dealloc leaves to a base that is itself a heap type. */
static void s_dealloc(PyObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    s_clear(self);
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(self);
    Py_DECREF(tp);
}

/* HttpStream(plugin, properties=None): the plugin's VM and root context read once; the
 * properties (rare) go to the subclass's _set_properties. */
static PyObject *str_vm, *str_ptr, *str_addr, *str_context_id, *str_properties;

static int s_init(PyObject *self, PyObject *args, PyObject *kw) {
    Stream *s = (Stream *)self;
    PyObject *plugin = NULL, *props = NULL;
    if (!PyArg_UnpackTuple(args, "HttpStream", 1, 2, &plugin, &props)) return -1;
    if (kw && PyDict_Size(kw)) {
        PyObject *p = PyDict_GetItemWithError(kw, str_properties);
        if ((!p && PyErr_Occurred()) || PyDict_Size(kw) != 1 || !p || props) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "HttpStream(plugin, properties=None)");
            return -1;
        }
        props = p;
    }
    PyObject *vmobj = PyObject_GetAttr(plugin, str_vm);
    if (!vmobj) return -1;
    PyObject *ptr = PyObject_GetAttr(vmobj, str_ptr);
    PyObject *addr = ptr ? PyObject_GetAttr(vmobj, str_addr) : NULL;
    PyObject *root = addr ? PyObject_GetAttr(plugin, str_context_id) : NULL;
    if (!root) {
        Py_DECREF(vmobj);
        Py_XDECREF(ptr);
        Py_XDECREF(addr);
        return -1;
    }
    s->vma = PyLong_AsUnsignedLongLong(addr);
    s->root = (unsigned int)PyLong_AsUnsignedLong(root);
    Py_DECREF(addr);
    Py_DECREF(root);
    s->id = 0;
    s->flags = 0;
    PyObject *old[3] = {s->plugin, s->vmobj, s->vm};
    Py_INCREF(plugin);
    s->plugin = plugin;
    s->vmobj = vmobj;
    s->vm = ptr;
    for (int i = 0; i < 3; i++) Py_XDECREF(old[i]);
    if (PyErr_Occurred()) return -1;
    if (props && props != Py_None) {
        int t = PyObject_IsTrue(props);
        if (t < 0) return -1;
        if (t) {
            PyObject *r = PyObject_CallMethod(self, "_set_properties", "O", props);
            if (!r) return -1;
            Py_DECREF(r);
        }
    }
    return 0;
}

static PyMemberDef s_members[] = {
    {"_vma", T_ULONGLONG, offsetof(Stream, vma), 0, NULL},
    {"_id", T_UINT, offsetof(Stream, id), 0, NULL},
    {"_root", T_UINT, offsetof(Stream, root), 0, NULL},
    {"flags", T_INT, offsetof(Stream, flags), 0, NULL},
    {"plugin", T_OBJECT, offsetof(Stream, plugin), 0, NULL},
    {"_vm", T_OBJECT, offsetof(Stream, vm), 0, NULL},
    {"_vmobj", T_OBJECT, offsetof(Stream, vmobj), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

#define FASTKW (METH_FASTCALL | METH_KEYWORDS)
static PyMethodDef s_methods[] = {
    {"send_request_headers", (PyCFunction)(void (*)(void))s_req_headers, FASTKW, NULL},
    {"send_response_headers", (PyCFunction)(void (*)(void))s_resp_headers, FASTKW, NULL},
    {"send_request_body", (PyCFunction)(void (*)(void))s_req_body, FASTKW, NULL},
    {"send_response_body", (PyCFunction)(void (*)(void))s_resp_body, FASTKW, NULL},
    {"finish", s_finish, METH_NOARGS, NULL},
    EXCHANGE_METHODS
    {NULL, NULL, 0, NULL},
};

static PyType_Slot s_slots[] = {
    {Py_tp_new, (void *)PyType_GenericNew},
    {Py_tp_init, (void *)s_init},
    {Py_tp_dealloc, (void *)s_dealloc},
    {Py_tp_finalize, (void *)s_finalize},
    {Py_tp_traverse, (void *)s_traverse},
    {Py_tp_clear, (void *)s_clear},
    {Py_tp_members, s_members},
    {Py_tp_methods, s_methods},
    {0, NULL},
};

/* StreamBase itself, set at import; the module keeps it alive. */
static PyTypeObject *stream_type;

static PyType_Spec s_spec = {"pyproxywasm._fast.StreamBase", sizeof(Stream), 0,
                             Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, s_slots};


/* ---- Opener: a root context's streams, made without Python ----------------------------
 * One per RootContext (made on first use): calling it makes an HttpStream on that root
 * the way HttpStream(root) would, without the type call, argument parsing and four
 * attribute reads; Plugin.http_stream calls it for the calling thread's root. It answers
 * None when there is something to do first that the Python path does (streams another
 * thread dropped are still to end, logging was reconfigured so the level the core holds
 * is stale) or when the VM is closed (the Python path says why). */
typedef struct {
    PyObject_HEAD
    PyTypeObject *cls;           /* HttpStream */
    PyObject *root, *vmobj, *vm; /* what each stream holds (Stream.plugin, vmobj, vm) */
    PyObject *dropped;           /* vm.dropped: ids other threads dropped, ended here */
    PyObject *cache;             /* root.logger._cache: emptied when logging is reconfigured */
    unsigned long long vma;
    unsigned int rootid;
} Opener;

static PyObject *o_new(PyTypeObject *tp, PyObject *args, PyObject *kw) {
    PyObject *cls, *root, *vmobj, *vm, *dropped, *cache;
    unsigned long long vma;
    unsigned int rootid;
    if (kw && PyDict_Size(kw)) {
        PyErr_SetString(PyExc_TypeError, "Opener takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O!OOOKIOO!:Opener", &PyType_Type, &cls, &root, &vmobj, &vm, &vma,
                          &rootid, &dropped, &PyDict_Type, &cache))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)cls, stream_type)) {
        PyErr_SetString(PyExc_TypeError, "Opener: cls must subclass StreamBase");
        return NULL;
    }
    Opener *o = (Opener *)((allocfunc)PyType_GetSlot(tp, Py_tp_alloc))(tp, 0);
    if (!o) return NULL;
    PyObject *refs[] = {cls, root, vmobj, vm, dropped, cache};
    for (int i = 0; i < 6; i++) Py_INCREF(refs[i]);
    o->cls = (PyTypeObject *)cls;
    o->root = root;
    o->vmobj = vmobj;
    o->vm = vm;
    o->dropped = dropped;
    o->cache = cache;
    o->vma = vma;
    o->rootid = rootid;
    return (PyObject *)o;
}

static PyObject *o_call(PyObject *self, PyObject *args, PyObject *kw) {
    Opener *o = (Opener *)self;
    (void)args;
    (void)kw;
    Py_ssize_t pending = PyObject_Size(o->dropped);
    if (pending < 0) return NULL;
    if (pending || !PyDict_Size(o->cache) || core_vm_closed((void *)(uintptr_t)o->vma)) Py_RETURN_NONE;
    Stream *s = (Stream *)((allocfunc)PyType_GetSlot(o->cls, Py_tp_alloc))(o->cls, 0);
    if (!s) return NULL; /* allocated zeroed: no id, no flags yet */
    s->vma = o->vma;
    s->root = o->rootid;
    Py_INCREF(o->root);
    Py_INCREF(o->vmobj);
    Py_INCREF(o->vm);
    s->plugin = o->root;
    s->vmobj = o->vmobj;
    s->vm = o->vm;
    return (PyObject *)s;
}

static int o_traverse(PyObject *self, visitproc visit, void *arg) {
    Opener *o = (Opener *)self;
    Py_VISIT(o->cls);
    Py_VISIT(o->root);
    Py_VISIT(o->vmobj);
    Py_VISIT(o->vm);
    Py_VISIT(o->dropped);
    Py_VISIT(o->cache);
    Py_VISIT(Py_TYPE(self)); /* a heap type: its instances hold it */
    return 0;
}

static int o_clear(PyObject *self) {
    Opener *o = (Opener *)self;
    Py_CLEAR(o->cls);
    Py_CLEAR(o->root);
    Py_CLEAR(o->vmobj);
    Py_CLEAR(o->vm);
    Py_CLEAR(o->dropped);
    Py_CLEAR(o->cache);
    return 0;
}

static void o_dealloc(PyObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    o_clear(self);
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(self);
    Py_DECREF(tp);
}

static PyType_Slot o_slots[] = {
    {Py_tp_new, (void *)o_new},
    {Py_tp_call, (void *)o_call},
    {Py_tp_dealloc, (void *)o_dealloc},
    {Py_tp_traverse, (void *)o_traverse},
    {Py_tp_clear, (void *)o_clear},
    {0, NULL},
};

static PyType_Spec o_spec = {"pyproxywasm._fast.Opener", sizeof(Opener), 0,
                             Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, o_slots};


/* ---- PluginBase: Plugin.http_stream without a Python frame -------------------------------
 * pyproxywasm.host.Plugin subclasses this type. http_stream() looks up the calling thread's
 * Opener for the plugin (host._local.state.openers[index]) and calls it; anything else
 * (properties, no state or opener yet, an Opener answering None) is the subclass's
 * _http_stream(state, properties), the general path. */
typedef struct {
    PyObject_HEAD
    PyObject *local;   /* the host's per-thread state holder (_local) */
    PyObject *index;   /* the plugin's index (an int), the key of its Opener */
    PyObject *opener;  /* a cache of _local.state.openers[index], for thread `tid`, valid */
    unsigned long tid; /* while openers_gen is still `gen`: it saves the thread-local  */
    unsigned long gen; /* lookup (about 650 instructions) on every new stream */
} PluginBase;

/* Bumped by openers_changed() (pyproxywasm.host, under the GIL) whenever a thread's
 * Openers are dropped: every PluginBase's cached one is then looked up again. */
static unsigned long openers_gen = 1;
static PyTypeObject *opener_type; /* set at import; the module keeps it alive */

static PyObject *openers_changed(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    openers_gen++;
    Py_RETURN_NONE;
}

static PyObject *str_state, *str_openers, *str_http_stream_general;

static PyObject *p_http_stream(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames) {
    PluginBase *p = (PluginBase *)self;
    Py_ssize_t nkw = kwnames ? PyTuple_Size(kwnames) : 0;
    PyObject *props = nargs ? args[0] : Py_None;
    if (nargs > 1 || nargs + nkw > 1 ||
        (nkw && PyUnicode_CompareWithASCIIString(PyTuple_GetItem(kwnames, 0), "properties"))) {
        PyErr_SetString(PyExc_TypeError, "http_stream(properties=None)");
        return NULL;
    }
    if (nkw) props = args[nargs];
    if (!p->local || !p->index) {
        PyErr_SetString(PyExc_RuntimeError, "Plugin not initialized");
        return NULL;
    }
    unsigned long tid = PyThread_get_thread_ident();
    PyObject *st = NULL, *op = NULL;
    if (props == Py_None) {
        if (p->opener && p->tid == tid && p->gen == openers_gen) {
            op = p->opener;
            Py_INCREF(op);
        } else {
            st = PyObject_GetAttr(p->local, str_state);
            if (!st) return NULL;
            if (st != Py_None) {
                PyObject *openers = PyObject_GetAttr(st, str_openers);
                if (!openers) {
                    Py_DECREF(st);
                    return NULL;
                }
                op = PyDict_GetItemWithError(openers, p->index); /* borrowed */
                Py_XINCREF(op);
                Py_DECREF(openers);
                if (!op && PyErr_Occurred()) {
                    Py_DECREF(st);
                    return NULL;
                }
                if (op && Py_TYPE(op) == opener_type) { /* cached for this thread */
                    PyObject *old = p->opener;
                    Py_INCREF(op);
                    p->opener = op;
                    Py_XDECREF(old);
                    p->tid = tid;
                    p->gen = openers_gen;
                }
            }
        }
    }
    if (op) {
        PyObject *r = Py_TYPE(op) == opener_type ? o_call(op, NULL, NULL) : PyObject_CallObject(op, NULL);
        Py_DECREF(op);
        if (r != Py_None) { /* a stream, or an error */
            Py_XDECREF(st);
            return r;
        }
        Py_DECREF(r);
    }
    if (!st && !(st = PyObject_GetAttr(p->local, str_state))) return NULL;
    PyObject *r = PyObject_CallMethodObjArgs(self, str_http_stream_general, st, props, NULL);
    Py_DECREF(st);
    return r;
}

static int p_traverse(PyObject *self, visitproc visit, void *arg) {
    PluginBase *p = (PluginBase *)self;
    Py_VISIT(p->local);
    Py_VISIT(p->index);
    Py_VISIT(p->opener);
    Py_VISIT(Py_TYPE(self)); /* as s_traverse */
    return 0;
}

static int p_clear(PyObject *self) {
    PluginBase *p = (PluginBase *)self;
    Py_CLEAR(p->local);
    Py_CLEAR(p->index);
    Py_CLEAR(p->opener);
    return 0;
}

/* Instances are Plugin's (a Python subclass), as for StreamBase's s_dealloc. */
static void p_dealloc(PyObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    p_clear(self);
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(self);
    Py_DECREF(tp);
}

static PyMemberDef p_members[] = {
    {"_local", T_OBJECT, offsetof(PluginBase, local), 0, NULL},
    {"index", T_OBJECT, offsetof(PluginBase, index), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef p_methods[] = {
    {"http_stream", (PyCFunction)(void (*)(void))p_http_stream, FASTKW,
     "http_stream(properties=None): a new HTTP stream through this plugin on the calling thread."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot p_slots[] = {
    {Py_tp_new, (void *)PyType_GenericNew},
    {Py_tp_dealloc, (void *)p_dealloc},
    {Py_tp_traverse, (void *)p_traverse},
    {Py_tp_clear, (void *)p_clear},
    {Py_tp_members, p_members},
    {Py_tp_methods, p_methods},
    {0, NULL},
};

static PyType_Spec p_spec = {"pyproxywasm._fast.PluginBase", sizeof(PluginBase), 0,
                             Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, p_slots};

static PyMethodDef methods[] = {
    {"init", (PyCFunction)(void (*)(void))init, METH_FASTCALL, NULL},
    {"set_constants", (PyCFunction)(void (*)(void))set_constants, METH_FASTCALL, NULL},
    {"set_helpers", (PyCFunction)(void (*)(void))set_helpers, METH_FASTCALL, NULL},
    {"set_hold_gil", set_hold_gil, METH_O, NULL},
    {"holds_gil", holds_gil, METH_NOARGS, NULL},
    {"openers_changed", openers_changed, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "pyproxywasm._fast",
                                    "HttpStream's per-event path (see _fast.c).", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fast(void) {
    if (!(str_vm = PyUnicode_InternFromString("vm")) || !(str_ptr = PyUnicode_InternFromString("ptr")) ||
        !(str_addr = PyUnicode_InternFromString("addr")) ||
        !(str_context_id = PyUnicode_InternFromString("context_id")) ||
        !(str_properties = PyUnicode_InternFromString("properties")) ||
        !(str_state = PyUnicode_InternFromString("state")) ||
        !(str_openers = PyUnicode_InternFromString("openers")) ||
        !(str_http_stream_general = PyUnicode_InternFromString("_http_stream")) || exchange_init())
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    PyObject *t = PyType_FromSpec(&s_spec);
    if (!t || PyModule_AddObject(m, "StreamBase", t) < 0) {
        Py_XDECREF(t);
        Py_DECREF(m);
        return NULL;
    }
    stream_type = (PyTypeObject *)t; /* the module holds it */
    PyObject *o = PyType_FromSpec(&o_spec);
    if (!o || PyModule_AddObject(m, "Opener", o) < 0) {
        Py_XDECREF(o);
        Py_DECREF(m);
        return NULL;
    }
    opener_type = (PyTypeObject *)o; /* the module holds it */
    PyObject *pb = PyType_FromSpec(&p_spec);
    if (!pb || PyModule_AddObject(m, "PluginBase", pb) < 0) {
        Py_XDECREF(pb);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
