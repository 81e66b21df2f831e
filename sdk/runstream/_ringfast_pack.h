/* msgpack for the common ``log`` row, in C: a dict whose keys are str and whose values are float,
 * int, bool, None or str, packed to exactly the bytes of
 * ``msgpack.Packer(use_bin_type=True).pack(row)`` (tests/format/test_ring_native.py holds it against
 * msgpack and ormsgpack).  Anything else (nested dicts, lists, numpy scalars, subclasses, ints
 * beyond 64 bits, strings that are not valid UTF-8) is declined, and the caller packs the row with
 * ormsgpack as before, so those rows keep their exact behaviour and errors.
 *
 * Included once, by _ringfast.c.  Not thread-safe by itself: it runs under the GIL, and the
 * scratch buffer is only touched between a pack's start and its PyBytes copy.
 */

static unsigned char *pack_buf;
static size_t pack_cap;

typedef struct {
    unsigned char *p;
    size_t n;
} Packer;

static int
pk_reserve(Packer *pk, size_t more)
{
    if (pk->n + more <= pack_cap)
        return 0;
    size_t cap = pack_cap ? pack_cap : 4096;
    while (cap < pk->n + more)
        cap *= 2;
    unsigned char *p = PyMem_RawRealloc(pack_buf, cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    pack_buf = p;
    pack_cap = cap;
    pk->p = p;
    return 0;
}

static inline void
pk_be16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static inline void
pk_be32(unsigned char *p, uint32_t v)
{
    v = __builtin_bswap32(v);
    memcpy(p, &v, 4);
}

static inline void
pk_be64(unsigned char *p, uint64_t v)
{
    v = __builtin_bswap64(v);
    memcpy(p, &v, 8);
}

/* The smallest msgpack header for a str/map/of ``n`` (msgpack-python's choices). */
static int
pk_str(Packer *pk, PyObject *s)
{
    Py_ssize_t n;
    const char *u;
    if (PyUnicode_IS_COMPACT_ASCII(s)) {
        n = PyUnicode_GET_LENGTH(s);
        u = (const char *)PyUnicode_DATA(s);
    }
    else {
        u = PyUnicode_AsUTF8AndSize(s, &n); /* cached on the str after the first call */
        if (u == NULL) {
            PyErr_Clear();
            return 1; /* surrogates: let msgpack raise its own error */
        }
    }
    if ((unsigned long long)n > 0xffffffffull)
        return 1;
    if (pk_reserve(pk, 5 + (size_t)n) < 0)
        return -1;
    unsigned char *p = pk->p + pk->n;
    if (n < 32) {
        *p++ = (unsigned char)(0xa0 | n);
    }
    else if (n < 256) {
        *p++ = 0xd9;
        *p++ = (unsigned char)n;
    }
    else if (n < 65536) {
        *p++ = 0xda;
        pk_be16(p, (uint16_t)n);
        p += 2;
    }
    else {
        *p++ = 0xdb;
        pk_be32(p, (uint32_t)n);
        p += 4;
    }
    memcpy(p, u, (size_t)n);
    pk->n = (size_t)(p + n - pk->p);
    return 0;
}

static inline size_t
pk_uint(unsigned char *p, unsigned long long v)
{
    if (v < 128) {
        p[0] = (unsigned char)v;
        return 1;
    }
    if (v < 256) {
        p[0] = 0xcc;
        p[1] = (unsigned char)v;
        return 2;
    }
    if (v < 65536) {
        p[0] = 0xcd;
        pk_be16(p + 1, (uint16_t)v);
        return 3;
    }
    if (v <= 0xffffffffull) {
        p[0] = 0xce;
        pk_be32(p + 1, (uint32_t)v);
        return 5;
    }
    p[0] = 0xcf;
    pk_be64(p + 1, v);
    return 9;
}

static inline size_t
pk_int(unsigned char *p, long long v)
{
    if (v >= 0)
        return pk_uint(p, (unsigned long long)v);
    if (v >= -32) {
        p[0] = (unsigned char)v;
        return 1;
    }
    if (v >= -128) {
        p[0] = 0xd0;
        p[1] = (unsigned char)v;
        return 2;
    }
    if (v >= -32768) {
        p[0] = 0xd1;
        pk_be16(p + 1, (uint16_t)v);
        return 3;
    }
    if (v >= -2147483648LL) {
        p[0] = 0xd2;
        pk_be32(p + 1, (uint32_t)v);
        return 5;
    }
    p[0] = 0xd3;
    pk_be64(p + 1, (uint64_t)v);
    return 9;
}

/* 0: packed; 1: declined (no error set); -1: error (MemoryError). */
static int
pk_value(Packer *pk, PyObject *v)
{
    if (pk_reserve(pk, 9) < 0)
        return -1;
    unsigned char *p = pk->p + pk->n;
    if (PyFloat_CheckExact(v)) {
        double d = PyFloat_AS_DOUBLE(v);
        uint64_t bits;
        memcpy(&bits, &d, 8);
        p[0] = 0xcb;
        pk_be64(p + 1, bits);
        pk->n += 9;
    }
    else if (PyLong_CheckExact(v)) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow > 0) {
            unsigned long long u = PyLong_AsUnsignedLongLong(v);
            if (u == (unsigned long long)-1 && PyErr_Occurred()) {
                PyErr_Clear();
                return 1; /* beyond 64 bits: msgpack raises OverflowError */
            }
            pk->n += pk_uint(p, u);
        }
        else if (overflow < 0) {
            return 1;
        }
        else {
            if (x == -1 && PyErr_Occurred())
                return -1;
            pk->n += pk_int(p, x);
        }
    }
    else if (v == Py_None) {
        p[0] = 0xc0;
        pk->n += 1;
    }
    else if (v == Py_True || v == Py_False) {
        p[0] = v == Py_True ? 0xc3 : 0xc2;
        pk->n += 1;
    }
    else if (PyUnicode_CheckExact(v)) {
        return pk_str(pk, v);
    }
    else {
        return 1;
    }
    return 0;
}

static int pk_placeholder(Packer *pk, long long id);

/* The msgpack bytes of ``row`` (an exact dict), or NULL: with an error set on failure, without
 * one when the row is not one this packer handles.  ``media[0..nmedia)`` are values of ``row``,
 * in its order, that are packed as ``{"_rs_media": id0 + j}`` (the media fast path, in
 * _ringfast_media.h); any other value that is not a scalar declines the row. */
static PyObject *
pack_row_media(PyObject *row, PyObject *const *media, int nmedia, long long id0)
{
    Packer pk = {pack_buf, 0};
    Py_ssize_t n = PyDict_GET_SIZE(row);
    if (pk_reserve(&pk, 5) < 0)
        return NULL;
    if (n < 16) {
        pk.p[0] = (unsigned char)(0x80 | n);
        pk.n = 1;
    }
    else if (n < 65536) {
        pk.p[0] = 0xde;
        pk_be16(pk.p + 1, (uint16_t)n);
        pk.n = 3;
    }
    else {
        pk.p[0] = 0xdf;
        pk_be32(pk.p + 1, (uint32_t)n);
        pk.n = 5;
    }
    Py_ssize_t i = 0;
    PyObject *k, *v;
    int j = 0;
    while (PyDict_Next(row, &i, &k, &v)) {
        int r;
        if (!PyUnicode_CheckExact(k))
            return NULL;
        if ((r = pk_str(&pk, k)) != 0)
            return NULL;
        if ((r = pk_value(&pk, v)) == 1 && j < nmedia && v == media[j])
            r = pk_placeholder(&pk, id0 + j++);
        if (r != 0)
            return NULL; /* declined (1, no error set) or failed (-1, error set) */
    }
    if (j != nmedia) /* the dict changed under us: let the Python path see it */
        return NULL;
    return PyBytes_FromStringAndSize((const char *)pk.p, (Py_ssize_t)pk.n);
}

static PyObject *
pack_row(PyObject *row)
{
    return pack_row_media(row, NULL, 0, 0);
}
