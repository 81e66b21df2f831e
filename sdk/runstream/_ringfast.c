/* runstream._ringfast: the fast paths of RingWriter.push and Run.log, one C call each.
 *
 * ``WriterCore`` is the C base of ``runstream.ring.NativeRingWriter``.  It holds the producer's
 * hot state (head, cached tail, seq, capacity, ...) as slots that the Python slow path reads and
 * writes as ordinary attributes, and its ``push`` does what ``PyRingWriter.push`` does for a
 * record that fits before the end of the data area with room by the cached tail and nothing
 * queued: header, body copy, CRC-32C, seq/head bump, then the publishing store of ``head``.  Every
 * other case (wrap, full ring, overflow queued, record too big, unusual argument types) calls the
 * Python ``_push_slow`` with the same arguments, so its behaviour and errors are the Python ones.
 * The bytes written are identical to the Python path's (tests/format/test_ring_native.py holds it).
 *
 * ``RunCore`` is the C base of ``runstream.run.Run`` (its ``_writer``, ``_step``, ``_pending`` and
 * ``_last_body`` are slots here).  Its ``log`` handles ``log(row)`` for a plain dict of scalars
 * with nothing pending: packs it (_ringfast_pack.h), takes the time, pushes, bumps the step.  All
 * else goes to the Python ``Run._log_py``, which is the whole pure-Python ``log``.
 *
 * Publication (docs/ring-format.md, "Publication and memory ordering"): the record's bytes are
 * plain stores; ``head`` is stored with release semantics (__atomic_store_n RELEASE: a plain
 * ``mov`` on x86-64, ``stlr`` on aarch64), so a consumer that sees the new head sees the record.
 *
 * Concurrency contract: as RingWriter's: one thread at a time, under the GIL; the consumer is in
 * another process and only reads what ``head`` covers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "runstream._ringfast writes little-endian records by plain stores; big-endian uses the Python path"
#endif

#define HEADER_SIZE 40
#define CRC_START 8
#define W_HEAD 8 /* u64 index of head in the control block */

#include "_ringfast_crc.h"
#include "_ringfast_pack.h"

/* crc32c(data, value=0) -> int, with the ``crc32c`` package's meaning of ``value``. */
static PyObject *
crc_call(uint32_t (*fn)(uint32_t, const unsigned char *, size_t), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "crc32c takes data and an optional starting value (%zd given)", nargs);
        return NULL;
    }
    uint32_t start = 0;
    if (nargs == 2) {
        unsigned long v = PyLong_AsUnsignedLong(args[1]);
        if (v == (unsigned long)-1 && PyErr_Occurred())
            return NULL;
        if (v > 0xffffffffu) {
            PyErr_SetString(PyExc_OverflowError, "crc32c starting value must fit 32 bits");
            return NULL;
        }
        start = (uint32_t)v;
    }
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_SIMPLE) < 0)
        return NULL;
    uint32_t crc = ~fn(~start, (const unsigned char *)b.buf, (size_t)b.len);
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(crc);
}

static PyObject *
mod_crc32c(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    return crc_call(crc_update, args, nargs);
}

static PyObject *
mod_crc32c_table(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    return crc_call(crc_sw, args, nargs);
}

/* --- WriterCore ------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *data;  /* memoryview of the data area (``ring.data``) */
    PyObject *words; /* memoryview of the control block as u64 (``ring.words``) */
    unsigned long long head, tail, seq, cap, max;
    long long overflow_bytes; /* > 0 exactly when the overflow holds a record */
} WriterCore;

static PyTypeObject WriterCoreType;
static PyObject *str_push_slow, *str_log_py, *str_push_parts_slow;

static int
core_traverse(WriterCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->data);
    Py_VISIT(self->words);
    return 0;
}

static int
core_clear(WriterCore *self)
{
    Py_CLEAR(self->data);
    Py_CLEAR(self->words);
    return 0;
}

static void
core_dealloc(WriterCore *self)
{
    PyObject_GC_UnTrack(self);
    core_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static unsigned long long
record_size(Py_ssize_t n)
{
    return ((unsigned long long)n + HEADER_SIZE + 7) & ~7ull;
}

/* Publish one record whose body is ``count`` parts, one after another, if it fits the fast path.
 * 1: published; 0: not attempted (the caller hands it to the Python slow path). */
/* The copy of a record's part into the ring.  A large part (a media payload) is written with
 * streaming stores: the ring's lines are not read first (the ring is 64 MiB, so they are cold)
 * and do not take the training step's data out of the cache; this process never reads them
 * again.  The sidecar reads them from memory either way.  ``ring_copy_fence`` orders those
 * stores before the head is published (x86's release store does not order streaming stores). */
#define RING_STREAM_MIN (64 * 1024)
#if defined(__x86_64__)
#include <emmintrin.h>
static void
ring_copy(unsigned char *dst, const unsigned char *src, size_t n)
{
    if (n < RING_STREAM_MIN) {
        memcpy(dst, src, n);
        return;
    }
    size_t head = (16 - ((uintptr_t)dst & 15)) & 15;
    memcpy(dst, src, head);
    dst += head;
    src += head;
    n -= head;
    for (; n >= 64; n -= 64, dst += 64, src += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)src), b = _mm_loadu_si128((const __m128i *)(src + 16)),
                c = _mm_loadu_si128((const __m128i *)(src + 32)), d = _mm_loadu_si128((const __m128i *)(src + 48));
        _mm_stream_si128((__m128i *)dst, a);
        _mm_stream_si128((__m128i *)(dst + 16), b);
        _mm_stream_si128((__m128i *)(dst + 32), c);
        _mm_stream_si128((__m128i *)(dst + 48), d);
    }
    memcpy(dst, src, n);
}
static inline void
ring_copy_fence(void)
{
    _mm_sfence();
}
#else
#define ring_copy memcpy
static inline void
ring_copy_fence(void)
{
}
#endif

/* ``last_crc``: when >= 0, the CRC register of the last part alone, started at 0 (a snapshot's,
 * computed as it was copied: snapshot_image); joined in instead of reading the part again. */
static int
push_fast_v(WriterCore *self, unsigned char kind, long long step, double t,
            const unsigned char *const *srcs, const Py_ssize_t *lens, int count, Py_ssize_t n, long long last_crc)
{
    unsigned long long size = record_size(n);
    unsigned long long head = self->head, cap = self->cap;
    unsigned long long pos = head % cap;
    if (self->overflow_bytes || pos + size > cap || cap - (head - self->tail) < size || size > self->max)
        return 0;
    /* A buffer per call, not one held for the writer's life: a held export would stop
     * RingMap.close().  A view that cannot be had (a closed ring) sends the record to the slow
     * path, which raises what the pure-Python writer raises. */
    Py_buffer d, w;
    if (PyObject_GetBuffer(self->data, &d, PyBUF_WRITABLE) < 0) {
        PyErr_Clear();
        return 0;
    }
    if (PyObject_GetBuffer(self->words, &w, PyBUF_WRITABLE) < 0) {
        PyErr_Clear();
        PyBuffer_Release(&d);
        return 0;
    }
    if ((unsigned long long)d.len < cap || w.len < (W_HEAD + 1) * 8) {
        PyBuffer_Release(&w);
        PyBuffer_Release(&d);
        return 0;
    }
    unsigned char *rec = (unsigned char *)d.buf + pos;
    /* Header bytes [8, 40): seq, kind, flags = 0, 6 reserved zero bytes, step, time. */
    unsigned char hdr[HEADER_SIZE - CRC_START];
    uint64_t seq = self->seq;
    memcpy(hdr, &seq, 8);
    memset(hdr + 8, 0, 8);
    hdr[8] = kind;
    memcpy(hdr + 16, &step, 8);
    memcpy(hdr + 24, &t, 8);
    memcpy(rec + CRC_START, hdr, sizeof hdr);
    uint32_t crc = crc_update(~0u, hdr, sizeof hdr);
    unsigned char *dst = rec + HEADER_SIZE;
    for (int i = 0; i < count; i++) {  /* the CRC reads the source, still in cache, not the ring */
        ring_copy(dst, srcs[i], (size_t)lens[i]);
        if (i == count - 1 && last_crc >= 0)
            crc = crc_mulmod(crc_x8n((size_t)lens[i]), crc) ^ (uint32_t)last_crc;
        else
            crc = crc_update(crc, srcs[i], (size_t)lens[i]);
        dst += lens[i];
    }
    crc = ~crc;
    uint32_t len32 = (uint32_t)n;
    memcpy(rec, &len32, 4);
    memcpy(rec + 4, &crc, 4);
    ring_copy_fence(); /* the streaming stores of ring_copy, ordered before the publish below */
    self->seq = seq + 1;
    self->head = head + size;
    /* Publish: every store above becomes visible no later than this one. */
    __atomic_store_n((uint64_t *)w.buf + W_HEAD, (uint64_t)self->head, __ATOMIC_RELEASE);
    PyBuffer_Release(&w);
    PyBuffer_Release(&d);
    return 1;
}

static int
push_fast(WriterCore *self, unsigned char kind, long long step, double t, PyObject *body)
{
    const unsigned char *src = (const unsigned char *)PyBytes_AS_STRING(body);
    Py_ssize_t n = PyBytes_GET_SIZE(body);
    return push_fast_v(self, kind, step, t, &src, &n, 1, n, -1);
}

static PyObject *
push_slow(PyObject *self, PyObject *kind, PyObject *step, PyObject *t, PyObject *body, unsigned long long size)
{
    PyObject *sz = PyLong_FromUnsignedLongLong(size);
    if (sz == NULL)
        return NULL;
    PyObject *call[6] = {self, kind, step, t, body, sz};
    PyObject *r = PyObject_VectorcallMethod(str_push_slow, call, 6 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(sz);
    return r;
}

/* push(kind, step, t, body) -> None.  Arguments the fast path does not take as they are (not
 * exact int/float/bytes, out of range) go to the Python slow path, which raises what the pure
 * Python writer would. */
static PyObject *
core_push(WriterCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "push takes kind, step, t and body (%zd given)", nargs);
        return NULL;
    }
    PyObject *body = args[3];
    if (!PyBytes_CheckExact(body)) {
        Py_ssize_t n = PyObject_Length(body);
        if (n < 0)
            return NULL;
        return push_slow((PyObject *)self, args[0], args[1], args[2], body, record_size(n));
    }
    if (PyLong_CheckExact(args[0]) && PyLong_CheckExact(args[1]) && PyFloat_CheckExact(args[2])) {
        long kind = PyLong_AsLong(args[0]);
        long long step = PyLong_AsLongLong(args[1]);
        if (PyErr_Occurred()) {
            PyErr_Clear();
        }
        else if (kind >= 0 && kind <= 255 &&
                 push_fast(self, (unsigned char)kind, step, PyFloat_AS_DOUBLE(args[2]), body)) {
            Py_RETURN_NONE;
        }
    }
    return push_slow((PyObject *)self, args[0], args[1], args[2], body, record_size(PyBytes_GET_SIZE(body)));
}

#define MAX_PARTS 8

/* push_parts(kind, step, t, parts) -> None: one record whose body is ``parts`` (a list of at most
 * MAX_PARTS bytes-like objects) joined, copied straight into the ring without joining them first
 * (a media payload).  Whatever the fast path does not take goes to ``_push_parts_slow``. */
static PyObject *
core_push_parts(WriterCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "push_parts takes kind, step, t and parts (%zd given)", nargs);
        return NULL;
    }
    PyObject *parts = args[3];
    if (PyList_CheckExact(parts) && PyList_GET_SIZE(parts) <= MAX_PARTS && PyLong_CheckExact(args[0]) &&
        PyLong_CheckExact(args[1]) && PyFloat_CheckExact(args[2])) {
        long kind = PyLong_AsLong(args[0]);
        long long step = PyLong_AsLongLong(args[1]);
        if (PyErr_Occurred()) {
            PyErr_Clear();
        }
        else if (kind >= 0 && kind <= 255) {
            Py_buffer bufs[MAX_PARTS];
            const unsigned char *srcs[MAX_PARTS];
            Py_ssize_t lens[MAX_PARTS], n = 0;
            int count = (int)PyList_GET_SIZE(parts), got = 0, done = 0;
            for (; got < count; got++) {
                if (PyObject_GetBuffer(PyList_GET_ITEM(parts, got), &bufs[got], PyBUF_C_CONTIGUOUS) < 0) {
                    PyErr_Clear();
                    break;
                }
                srcs[got] = (const unsigned char *)bufs[got].buf;
                lens[got] = bufs[got].len;
                n += bufs[got].len;
            }
            if (got == count)
                done = push_fast_v(self, (unsigned char)kind, step, PyFloat_AS_DOUBLE(args[2]), srcs, lens, count,
                                   n, -1);
            for (int i = 0; i < got; i++)
                PyBuffer_Release(&bufs[i]);
            if (done)
                Py_RETURN_NONE;
        }
    }
    PyObject *call[5] = {(PyObject *)self, args[0], args[1], args[2], parts};
    return PyObject_VectorcallMethod(str_push_parts_slow, call, 5 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

static PyMethodDef core_methods[] = {
    {"push", (PyCFunction)(void (*)(void))core_push, METH_FASTCALL,
     "push($self, kind, step, t, body, /)\n--\n\nPublish one record, or hand it to _push_slow."},
    {"push_parts", (PyCFunction)(void (*)(void))core_push_parts, METH_FASTCALL,
     "push_parts($self, kind, step, t, parts, /)\n--\n\nPublish one record of joined parts, or hand "
     "it to _push_parts_slow."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef core_members[] = {
    {"_data", T_OBJECT_EX, offsetof(WriterCore, data), 0, "the ring's data area"},
    {"_words", T_OBJECT_EX, offsetof(WriterCore, words), 0, "the ring's control block, u64 words"},
    {"_head", T_ULONGLONG, offsetof(WriterCore, head), 0, "bytes ever published"},
    {"_tail", T_ULONGLONG, offsetof(WriterCore, tail), 0, "last tail seen"},
    {"_seq", T_ULONGLONG, offsetof(WriterCore, seq), 0, "seq of the next record"},
    {"_cap", T_ULONGLONG, offsetof(WriterCore, cap), 0, "data area size"},
    {"_max", T_ULONGLONG, offsetof(WriterCore, max), 0, "largest record accepted"},
    {"_overflow_bytes", T_LONGLONG, offsetof(WriterCore, overflow_bytes), 0, "bytes in the overflow"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject WriterCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runstream._ringfast.WriterCore",
    .tp_basicsize = sizeof(WriterCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "C fast path of RingWriter.push; subclass it and define _push_slow.",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_methods = core_methods,
    .tp_members = core_members,
};

/* --- RunCore --------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *writer;    /* _writer: the run's RingWriter */
    PyObject *step;      /* _step: an int, the step the next committed row gets */
    PyObject *pending;   /* _pending: None, or the row being merged (commit=False) */
    PyObject *last_body; /* _last_body: msgpack of the last committed row, or None */
    long long media_next_id;    /* _media_next_id: the id the next MEDIA record gets */
    long long media_inline_max; /* _media_inline_max: largest payload sent inline; 0: no fast path */
} RunCore;

#define KIND_ROW 3

static int
run_traverse(RunCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->writer);
    Py_VISIT(self->step);
    Py_VISIT(self->pending);
    Py_VISIT(self->last_body);
    return 0;
}

static int
run_clear(RunCore *self)
{
    Py_CLEAR(self->writer);
    Py_CLEAR(self->step);
    Py_CLEAR(self->pending);
    Py_CLEAR(self->last_body);
    return 0;
}

static void
run_dealloc(RunCore *self)
{
    PyObject_GC_UnTrack(self);
    run_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* time.time(), computed the way CPython computes it (same double for the same clock reading). */
static double
wall_time(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long ns = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    if (ns % 1000000000LL == 0)
        return (double)(ns / 1000000000LL);
    return (double)ns / 1e9;
}

#include "_ringfast_media.h"

static PyObject *
log_py(RunCore *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *meth = PyObject_GetAttr((PyObject *)self, str_log_py);
    if (meth == NULL)
        return NULL;
    PyObject *r = PyObject_Vectorcall(meth, args, (size_t)nargs, kwnames);
    Py_DECREF(meth);
    return r;
}

/* log(data, step=None, commit=None) */
static PyObject *
run_log(RunCore *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs != 1 || kwnames != NULL || !PyDict_CheckExact(args[0]) ||
        (self->pending != NULL && self->pending != Py_None) || self->step == NULL ||
        !PyLong_CheckExact(self->step) || self->writer == NULL ||
        !PyObject_TypeCheck(self->writer, &WriterCoreType))
        return log_py(self, args, nargs, kwnames);
    int overflow;
    long long step = PyLong_AsLongLongAndOverflow(self->step, &overflow);
    if (overflow || step == LLONG_MAX)
        return log_py(self, args, nargs, kwnames);
    PyObject *body = pack_row(args[0]);
    double t = 0;
    if (body == NULL && !PyErr_Occurred() && self->media_inline_max > 0) {
        body = log_media(self, args[0], step, &t); /* its MEDIA records pushed, at time t */
    }
    else if (body != NULL) {
        t = wall_time();
    }
    if (body == NULL)
        return PyErr_Occurred() ? NULL : log_py(self, args, nargs, kwnames);
    if (!push_fast((WriterCore *)self->writer, KIND_ROW, step, t, body)) {
        PyObject *k = PyLong_FromLong(KIND_ROW), *tt = PyFloat_FromDouble(t), *res = NULL;
        if (k != NULL && tt != NULL)
            res = push_slow(self->writer, k, self->step, tt, body, record_size(PyBytes_GET_SIZE(body)));
        Py_XDECREF(k);
        Py_XDECREF(tt);
        if (res == NULL) {
            Py_DECREF(body);
            return NULL;
        }
        Py_DECREF(res);
    }
    PyObject *next = PyLong_FromLongLong(step + 1);
    if (next == NULL) {
        Py_DECREF(body);
        return NULL;
    }
    Py_XSETREF(self->last_body, body);
    Py_SETREF(self->step, next);
    Py_RETURN_NONE;
}

static PyMethodDef run_methods[] = {
    {"log", (PyCFunction)(void (*)(void))run_log, METH_FASTCALL | METH_KEYWORDS,
     "log($self, data, step=None, commit=None)\n--\n\n"
     "Log a dict of metrics as one history row: copied into the run's shared-memory ring in about\n"
     "a microsecond; never blocks on the disk, the sidecar or the network.  When the ring is full\n"
     "records wait in a bounded in-process overflow, then are dropped and counted\n"
     "(_runstream/dropped_records).  Arguments, step/commit rules and errors:\n"
     "help(runstream.Run._log_py), the Python reference of this C fast path."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef run_members[] = {
    {"_writer", T_OBJECT_EX, offsetof(RunCore, writer), 0, "the run's ring writer"},
    {"_step", T_OBJECT_EX, offsetof(RunCore, step), 0, "step of the next committed row"},
    {"_pending", T_OBJECT, offsetof(RunCore, pending), 0, "row being merged, or None"},
    {"_last_body", T_OBJECT, offsetof(RunCore, last_body), 0, "msgpack of the last committed row"},
    {"_media_next_id", T_LONGLONG, offsetof(RunCore, media_next_id), 0, "id of the next MEDIA record"},
    {"_media_inline_max", T_LONGLONG, offsetof(RunCore, media_inline_max), 0,
     "largest media payload sent through the ring; 0 turns the media fast path off"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject RunCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runstream._ringfast.RunCore",
    .tp_basicsize = sizeof(RunCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "C fast path of Run.log; subclass it and define _log_py.",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)run_dealloc,
    .tp_traverse = (traverseproc)run_traverse,
    .tp_clear = (inquiry)run_clear,
    .tp_methods = run_methods,
    .tp_members = run_members,
};

/* --- module ---------------------------------------------------------------------------------- */

/* pack_row(row) -> bytes | None: the C msgpack of a row, None when it declines (for tests). */
static PyObject *
mod_pack_row(PyObject *m, PyObject *row)
{
    if (!PyDict_CheckExact(row)) {
        PyErr_Format(PyExc_TypeError, "pack_row takes a dict, not %.100s", Py_TYPE(row)->tp_name);
        return NULL;
    }
    PyObject *b = pack_row(row);
    if (b == NULL && !PyErr_Occurred())
        Py_RETURN_NONE;
    return b;
}

static PyMethodDef mod_methods[] = {
    {"crc32c", (PyCFunction)(void (*)(void))mod_crc32c, METH_FASTCALL,
     "crc32c(data, value=0) -> int: CRC-32C, hardware-accelerated where the CPU has it."},
    {"crc32c_table", (PyCFunction)(void (*)(void))mod_crc32c_table, METH_FASTCALL,
     "crc32c_table(data, value=0) -> int: CRC-32C by the portable table code (for tests)."},
    {"snapshot_image", (PyCFunction)mod_snapshot_image, METH_O,
     "snapshot_image(array) -> (bytes, shape, crc) | None: an 8-bit image's pixels copied, with their\n"
     "CRC-32C register from 0; None for any other array (runstream.Image's fast path)."},
    {"pack_row", (PyCFunction)mod_pack_row, METH_O,
     "pack_row(row) -> bytes | None: msgpack of a dict of scalars, None if not one (for tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "runstream._ringfast",
    .m_doc = "C fast paths of the runstream ring writer and Run.log, and CRC-32C.",
    .m_size = -1,
    .m_methods = mod_methods,
};

static int
add_type(PyObject *m, const char *name, PyTypeObject *type)
{
    if (PyType_Ready(type) < 0)
        return -1;
    Py_INCREF(type);
    if (PyModule_AddObject(m, name, (PyObject *)type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

PyMODINIT_FUNC
PyInit__ringfast(void)
{
    crc_init();
    str_push_slow = PyUnicode_InternFromString("_push_slow");
    str_log_py = PyUnicode_InternFromString("_log_py");
    str_push_parts_slow = PyUnicode_InternFromString("_push_parts_slow");
    str_rs_fast = PyUnicode_InternFromString("_rs_fast");
    str_placeholder = PyUnicode_InternFromString("_rs_media");
    str_id = PyUnicode_InternFromString("id");
    str_key = PyUnicode_InternFromString("key");
    str_step = PyUnicode_InternFromString("step");
    if (str_push_slow == NULL || str_log_py == NULL || str_push_parts_slow == NULL || str_rs_fast == NULL ||
        str_placeholder == NULL || str_id == NULL || str_key == NULL || str_step == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL)
        return NULL;
    if (add_type(m, "WriterCore", &WriterCoreType) < 0 || add_type(m, "RunCore", &RunCoreType) < 0 ||
        PyModule_AddStringConstant(m, "CRC32C_IMPL", crc_update == crc_sw ? "table" : CRC_HW_NAME) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
