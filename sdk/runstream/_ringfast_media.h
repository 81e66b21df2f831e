/* ``log``'s media fast path, in C: a row of scalars and media objects whose MEDIA record body the
 * object prepared when it was made (``Media._rs_fast``, see sdk/runstream/media/base.py), e.g.
 * ``log({"img": runstream.Image(uint8_array), "loss": x})``.
 *
 * It writes exactly the records the Python path writes (MediaPacker.flat_row,
 * sdk/runstream/media/pack.py; docs/media.md, "The MEDIA record"): for each media value, in the
 * row's order, one MEDIA record ``meta_len:u32le | msgpack meta | payload`` with the meta
 * ``{<the object's fields>..., "id": id, "key": key, "step": step}``, then the ROW record with
 * ``{"_rs_media": id}`` in the media's places, all with one timestamp.  The Python path costs
 * ~100 us per row when the training step has left the caches cold (its walks, dicts and
 * msgpack calls); this one costs the payload's copy into the ring.
 *
 * Anything it does not take (lists, tables, payloads over the inline bound, rows with other
 * values, a closed ring) is declined before anything is pushed, so the Python path then sees the
 * row as if this did not exist.  Included once, by _ringfast.c, after RunCore.
 */

#define KIND_MEDIA 10
#define MEDIA_FAST_MAX 8     /* media values in one row; more go the Python way */
#define MEDIA_META_MAX 1024  /* a meta larger than this (a long caption) goes the Python way */

static PyObject *str_rs_fast, *str_placeholder, *str_id, *str_key, *str_step;

/* ``{"_rs_media": id}`` */
static int
pk_placeholder(Packer *pk, long long id)
{
    if (pk_reserve(pk, 1) < 0)
        return -1;
    pk->p[pk->n++] = 0x81;
    int r = pk_str(pk, str_placeholder);
    if (r != 0)
        return r;
    if (pk_reserve(pk, 9) < 0)
        return -1;
    pk->n += pk_int(pk->p + pk->n, id);
    return 0;
}

/* One media value's prepared body: ``(static: bytes, npairs: int, payload, crc: int | None)``,
 * where ``static`` is the msgpack of the meta's ``npairs`` fixed key/value pairs without a map
 * header, and ``crc`` the payload's CRC-32C register started at 0 (not inverted), when known. */
typedef struct {
    PyObject *obj;   /* the media object (a new reference) */
    PyObject *key;   /* its key in the row (borrowed from the row) */
    PyObject *fast;  /* its _rs_fast tuple (a new reference) */
    Py_buffer payload;
    int has_payload;
    long long crc; /* the payload's CRC register from 0, when the object knows it; else -1 */
} MediaFast;

static void
media_release(MediaFast *m, int n)
{
    for (int i = 0; i < n; i++) {
        if (m[i].has_payload)
            PyBuffer_Release(&m[i].payload);
        Py_XDECREF(m[i].fast);
        Py_XDECREF(m[i].obj);
    }
}

/* The media values of ``row`` that this path takes; -1 when it declines the row (nothing set). */
static int
media_collect(PyObject *row, MediaFast *m, long long inline_max)
{
    int n = 0;
    Py_ssize_t i = 0;
    PyObject *k, *v;
    while (PyDict_Next(row, &i, &k, &v)) {
        if (!PyUnicode_CheckExact(k))
            goto decline;
        if (PyFloat_CheckExact(v) || PyLong_CheckExact(v) || v == Py_None || PyBool_Check(v) ||
            PyUnicode_CheckExact(v))
            continue; /* the row's packer takes or declines these */
        if (n == MEDIA_FAST_MAX || PyList_CheckExact(v) || PyDict_CheckExact(v) || PyTuple_CheckExact(v))
            goto decline;
        PyObject *f = PyObject_GetAttr(v, str_rs_fast);
        if (f == NULL) {
            PyErr_Clear();
            goto decline;
        }
        m[n] = (MediaFast){.obj = Py_NewRef(v), .key = k, .fast = f, .has_payload = 0, .crc = -1};
        n++;
        if (!PyTuple_CheckExact(f) || PyTuple_GET_SIZE(f) != 4 || !PyBytes_CheckExact(PyTuple_GET_ITEM(f, 0)) ||
            !PyLong_CheckExact(PyTuple_GET_ITEM(f, 1)))
            goto decline; /* None: this object has no prepared body */
        PyObject *c = PyTuple_GET_ITEM(f, 3);
        if (PyLong_CheckExact(c)) {
            long long crc = PyLong_AsLongLong(c);
            if (crc < 0 || crc > 0xffffffffLL) {
                PyErr_Clear();
                goto decline;
            }
            m[n - 1].crc = crc;
        }
        else if (c != Py_None) {
            goto decline;
        }
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(f, 2), &m[n - 1].payload, PyBUF_C_CONTIGUOUS) < 0) {
            PyErr_Clear();
            goto decline;
        }
        m[n - 1].has_payload = 1;
        if (m[n - 1].payload.len > inline_max) /* staged on disk: the Python path's work */
            goto decline;
    }
    if (n == 0)
        return -1;
    return n;
decline:
    media_release(m, n);
    return -1;
}

/* Write media value ``m``'s meta (the map with id, key and step added) into ``out``; its length,
 * or 0 when it does not fit (the row then goes the Python way). */
static size_t
media_meta(const MediaFast *m, long long id, long long step, unsigned char *out)
{
    PyObject *st = PyTuple_GET_ITEM(m->fast, 0);
    long npairs = PyLong_AsLong(PyTuple_GET_ITEM(m->fast, 1));
    Py_ssize_t slen = PyBytes_GET_SIZE(st);
    if (npairs < 0 || npairs + 3 > 0xffff || slen > MEDIA_META_MAX / 2) {
        PyErr_Clear();
        return 0;
    }
    Packer pk = {pack_buf, 0}; /* the row packer's scratch: each meta is copied out before the row */
    if (pk_reserve(&pk, 3 + (size_t)slen) < 0)
        return 0;
    long n = npairs + 3;
    if (n < 16) {
        pk.p[pk.n++] = (unsigned char)(0x80 | n);
    }
    else {
        pk.p[pk.n++] = 0xde;
        pk_be16(pk.p + pk.n, (uint16_t)n);
        pk.n += 2;
    }
    memcpy(pk.p + pk.n, PyBytes_AS_STRING(st), (size_t)slen);
    pk.n += (size_t)slen;
    if (pk_str(&pk, str_id) != 0 || pk_reserve(&pk, 9) < 0)
        return 0;
    pk.n += pk_int(pk.p + pk.n, id);
    if (pk_str(&pk, str_key) != 0 || pk_str(&pk, m->key) != 0 || pk_str(&pk, str_step) != 0 ||
        pk_reserve(&pk, 9) < 0)
        return 0;
    pk.n += pk_int(pk.p + pk.n, step);
    if (pk.n > MEDIA_META_MAX) {
        PyErr_Clear();
        return 0;
    }
    memcpy(out, pk.p, pk.n);
    return pk.n;
}

/* Publish one MEDIA record of parts [meta_len, meta, payload]; through ``_push_parts_slow`` (the
 * overflow, or a counted drop) when the ring has no room now.  0, or -1 with an error set. */
static int
media_push(PyObject *writer, long long step, double t, const unsigned char *meta, size_t meta_len,
           const Py_buffer *payload, long long crc)
{
    unsigned char lenbuf[4];
    uint32_t ml = (uint32_t)meta_len;
    memcpy(lenbuf, &ml, 4); /* little-endian hosts only: _ringfast.c refuses to build otherwise */
    const unsigned char *srcs[3] = {lenbuf, meta, (const unsigned char *)payload->buf};
    Py_ssize_t lens[3] = {4, (Py_ssize_t)meta_len, payload->len};
    Py_ssize_t n = lens[0] + lens[1] + lens[2];
    if (push_fast_v((WriterCore *)writer, KIND_MEDIA, step, t, srcs, lens, 3, n, crc))
        return 0;
    PyObject *parts = Py_BuildValue("[y#y#N]", (const char *)lenbuf, (Py_ssize_t)4, (const char *)meta,
                                    (Py_ssize_t)meta_len,
                                    PyMemoryView_FromMemory((char *)payload->buf, payload->len, PyBUF_READ));
    PyObject *k = PyLong_FromLong(KIND_MEDIA), *s = PyLong_FromLongLong(step), *tt = PyFloat_FromDouble(t);
    PyObject *r = NULL;
    if (parts != NULL && k != NULL && s != NULL && tt != NULL) {
        PyObject *call[5] = {writer, k, s, tt, parts};
        r = PyObject_VectorcallMethod(str_push_parts_slow, call, 5 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    Py_XDECREF(parts);
    Py_XDECREF(k);
    Py_XDECREF(s);
    Py_XDECREF(tt);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* The row's body with its media values as placeholders, after the media's MEDIA records are
 * published; NULL when declined (nothing pushed, no error) or on an error (set).  ``*t`` is the
 * records' one timestamp. */
static PyObject *
log_media(RunCore *self, PyObject *row, long long step, double *t)
{
    MediaFast m[MEDIA_FAST_MAX];
    unsigned char metas[MEDIA_FAST_MAX][MEDIA_META_MAX];
    size_t meta_lens[MEDIA_FAST_MAX];
    PyObject *objs[MEDIA_FAST_MAX];
    int n = media_collect(row, m, self->media_inline_max);
    if (n < 0)
        return NULL;
    long long id0 = self->media_next_id;
    for (int i = 0; i < n; i++) {
        objs[i] = m[i].obj;
        if ((meta_lens[i] = media_meta(&m[i], id0 + i, step, metas[i])) == 0) {
            media_release(m, n);
            return NULL; /* (a MemoryError, if that is what stopped it, stays set) */
        }
    }
    /* Packed before anything is pushed: a row the packer declines (a surrogate, an int past 64
     * bits) goes the Python way whole. */
    PyObject *body = pack_row_media(row, objs, n, id0);
    if (body == NULL) {
        media_release(m, n);
        return NULL;
    }
    /* A closed ring would take nothing, and the Python path says why (the run is finished). */
    Py_buffer probe;
    if (PyObject_GetBuffer(((WriterCore *)self->writer)->data, &probe, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        Py_DECREF(body);
        media_release(m, n);
        return NULL;
    }
    PyBuffer_Release(&probe);
    *t = wall_time();
    self->media_next_id = id0 + n;  /* taken from here on, even if a push below fails */
    for (int i = 0; i < n; i++) {
        if (media_push(self->writer, step, *t, metas[i], meta_lens[i], &m[i].payload, m[i].crc) < 0) {
            Py_DECREF(body);
            media_release(m, n);
            return NULL;
        }
    }
    media_release(m, n);
    return body;
}

/* snapshot_image(array) -> (bytes, shape, crc) | None: an 8-bit H x W or H x W x {3,4} image's
 * pixels copied (the caller may refill its buffer at once), with their CRC register (from 0,
 * not inverted) computed in the same pass (a strided view is gathered first); None for anything
 * else (other dtypes or shapes), which runstream.Image handles in Python.  The common Image in
 * one C call: numpy's dtype and shape checks cost tens of microseconds when a training step has
 * left the caches cold. */
static PyObject *
mod_snapshot_image(PyObject *m, PyObject *obj)
{
    Py_buffer v;
    if (PyObject_GetBuffer(obj, &v, PyBUF_RECORDS_RO) < 0) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *out = NULL;
    int ok = v.itemsize == 1 && v.format != NULL && strcmp(v.format, "B") == 0 &&
             (v.ndim == 2 || (v.ndim == 3 && (v.shape[2] == 3 || v.shape[2] == 4))) && v.len > 0;
    if (!ok) {
        PyBuffer_Release(&v);
        Py_RETURN_NONE;
    }
    PyObject *b = PyBytes_FromStringAndSize(NULL, v.len);
    PyObject *shape = PyTuple_New(v.ndim);
    if (b != NULL && shape != NULL) {
        for (int i = 0; i < v.ndim; i++)
            PyTuple_SET_ITEM(shape, i, PyLong_FromSsize_t(v.shape[i])); /* small ints: cached */
        unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(b);
        uint32_t crc = 0;
        if (PyBuffer_IsContiguous(&v, 'C'))
            crc = copy_crc(dst, (const unsigned char *)v.buf, (size_t)v.len);
        else if (PyBuffer_ToContiguous(dst, &v, v.len, 'C') == 0) /* a slice, a channel: gathered */
            crc = crc_update(0, dst, (size_t)v.len);
        else
            Py_CLEAR(b);
        if (b != NULL)
            out = Py_BuildValue("(OOk)", b, shape, (unsigned long)crc);
    }
    Py_XDECREF(b);
    Py_XDECREF(shape);
    PyBuffer_Release(&v);
    return out;
}
