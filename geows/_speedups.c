/* Optional C speedups, built when a compiler is available; geows works
 * without them.
 *
 * apply_mask: geows.frames.apply_mask (same signature as the pure-Python
 * fallback): XOR a buffer with a 4-byte mask, 8 bytes at a time.
 *
 * atomic_add64 / atomic_load64 / atomic_store64: sequentially consistent
 * 64-bit operations on an aligned slot of a buffer, for geows.sharedarea.
 * They are defined only where 64-bit atomics are always lock-free: a
 * libatomic fallback would use locks private to one process, which would
 * not exclude the other workers that map the same shared memory.
 *
 * parse_data_frames: the common case of geows.protocol's frame loop, whole
 * masked single-frame text and binary messages, unmasked and decoded.
 *
 * server_frame: a whole unmasked frame, header and payload in one object.
 *
 * cgi_headers: geows.wsgi's header-to-environ loop (same signature as the
 * pure-Python fallback there): HTTP_* keys, CONTENT_TYPE, CONTENT_LENGTH.
 *
 * install_chunk_cache: keep a few freed 16 KiB interpreter stack chunks
 * for reuse instead of returning them to the kernel (see below). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static PyObject *
apply_mask(PyObject *self, PyObject *args)
{
    Py_buffer data, mask;
    if (!PyArg_ParseTuple(args, "y*y*:apply_mask", &data, &mask))
        return NULL;
    if (mask.len != 4) {
        PyBuffer_Release(&data);
        PyBuffer_Release(&mask);
        PyErr_SetString(PyExc_ValueError, "mask must be 4 bytes");
        return NULL;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, data.len);
    if (result != NULL) {
        const unsigned char *in = data.buf;
        const unsigned char *m = mask.buf;
        unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
        Py_ssize_t n = data.len, i = 0;
        uint64_t m8;
        unsigned char pattern[8] = {m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]};
        memcpy(&m8, pattern, 8);
        for (; i + 8 <= n; i += 8) {
            uint64_t v;
            memcpy(&v, in + i, 8);
            v ^= m8;
            memcpy(out + i, &v, 8);
        }
        for (; i < n; i++)
            out[i] = in[i] ^ m[i & 3];
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&mask);
    return result;
}

#if defined(__GNUC__) && defined(__GCC_ATOMIC_LLONG_LOCK_FREE) && \
    __GCC_ATOMIC_LLONG_LOCK_FREE == 2
#define GEOWS_ATOMICS 1

/* The 8-byte slot at buf[pos], or NULL with ValueError set when the slot
 * does not lie inside the buffer or is not 8-byte aligned in memory. */
static uint64_t *
slot64(const Py_buffer *buf, Py_ssize_t pos)
{
    if (pos < 0 || buf->len < 8 || pos > buf->len - 8) {
        PyErr_Format(PyExc_ValueError,
                     "8 bytes at position %zd do not fit in a buffer of "
                     "%zd bytes", pos, buf->len);
        return NULL;
    }
    char *addr = (char *)buf->buf + pos;
    if (((uintptr_t)addr & 7u) != 0) {
        PyErr_Format(PyExc_ValueError,
                     "position %zd is not 8-byte aligned in memory", pos);
        return NULL;
    }
    return (uint64_t *)addr;
}

/* Unsigned arithmetic wraps without undefined behaviour; the result is
 * reinterpreted as two's complement, as the pure-Python path does. */
static int64_t
as_signed(uint64_t value)
{
    int64_t result;
    memcpy(&result, &value, sizeof result);
    return result;
}

static PyObject *
atomic_add64(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    Py_ssize_t pos;
    long long amount;
    if (!PyArg_ParseTuple(args, "w*nL:atomic_add64", &buf, &pos, &amount))
        return NULL;
    uint64_t *slot = slot64(&buf, pos);
    PyObject *result = NULL;
    if (slot != NULL) {
        uint64_t now = __atomic_add_fetch(slot, (uint64_t)amount,
                                          __ATOMIC_SEQ_CST);
        result = PyLong_FromLongLong(as_signed(now));
    }
    PyBuffer_Release(&buf);
    return result;
}

static PyObject *
atomic_load64(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    Py_ssize_t pos;
    if (!PyArg_ParseTuple(args, "y*n:atomic_load64", &buf, &pos))
        return NULL;
    uint64_t *slot = slot64(&buf, pos);
    PyObject *result = NULL;
    if (slot != NULL)
        result = PyLong_FromLongLong(
            as_signed(__atomic_load_n(slot, __ATOMIC_SEQ_CST)));
    PyBuffer_Release(&buf);
    return result;
}

static PyObject *
atomic_store64(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    Py_ssize_t pos;
    long long value;
    if (!PyArg_ParseTuple(args, "w*nL:atomic_store64", &buf, &pos, &value))
        return NULL;
    uint64_t *slot = slot64(&buf, pos);
    if (slot != NULL)
        __atomic_store_n(slot, (uint64_t)value, __ATOMIC_SEQ_CST);
    PyBuffer_Release(&buf);
    if (slot == NULL)
        return NULL;
    Py_RETURN_NONE;
}
#endif

/* Messages from buf[pos:], as long as each next frame is a whole, masked,
 * unfragmented text or binary frame (FIN set, RSV clear) of at most
 * max_size bytes (-1: no limit) whose text, if text, is valid UTF-8.
 * Returns ([message_cls(payload, text or None), ...], pos after them).
 * It stops, without error, at the first frame that is anything else --
 * a control frame, a fragment, a partial or oversized frame, a bad frame,
 * invalid UTF-8 -- and geows.protocol's Python loop takes it from there,
 * raising whatever error that frame deserves. */
static PyObject *
parse_data_frames(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos, max_size;
    PyObject *message_cls;
    if (!PyArg_ParseTuple(args, "y*nnO:parse_data_frames", &view, &pos,
                          &max_size, &message_cls))
        return NULL;
    PyObject *messages = PyList_New(0);
    if (messages == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const unsigned char *buf = view.buf;
    Py_ssize_t n = view.len;
    if (pos < 0)
        pos = n; /* nothing to do: the caller passes 0 or more */
    while (n - pos >= 2) {
        unsigned char b0 = buf[pos], b1 = buf[pos + 1];
        if ((b0 != 0x81 && b0 != 0x82) || !(b1 & 0x80))
            break;
        uint64_t length = b1 & 0x7F;
        Py_ssize_t hlen = 2;
        if (length == 126) {
            if (n - pos < 4)
                break;
            length = ((uint64_t)buf[pos + 2] << 8) | buf[pos + 3];
            hlen = 4;
        } else if (length == 127) {
            if (n - pos < 10)
                break;
            length = 0;
            for (int i = 2; i < 10; i++)
                length = (length << 8) | buf[pos + i];
            hlen = 10;
        }
        hlen += 4; /* the masking key */
        if (n - pos < hlen || (uint64_t)(n - pos - hlen) < length)
            break; /* not all here yet (or a length no buffer holds) */
        if (max_size >= 0 && length > (uint64_t)max_size)
            break;
        const unsigned char *mask = buf + pos + hlen - 4;
        const unsigned char *in = buf + pos + hlen;
        PyObject *payload = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)length);
        if (payload == NULL)
            goto error;
        unsigned char *out = (unsigned char *)PyBytes_AS_STRING(payload);
        for (Py_ssize_t i = 0; i < (Py_ssize_t)length; i++)
            out[i] = in[i] ^ mask[i & 3];
        PyObject *text = Py_None;
        Py_INCREF(text);
        if (b0 == 0x81) {
            Py_DECREF(text);
            text = PyUnicode_DecodeUTF8((const char *)out, (Py_ssize_t)length,
                                        "strict");
            if (text == NULL) {
                if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                    Py_DECREF(payload);
                    goto error;
                }
                PyErr_Clear(); /* Python fails the connection with 1007 */
                Py_DECREF(payload);
                break;
            }
        }
        PyObject *message =
            PyObject_CallFunctionObjArgs(message_cls, payload, text, NULL);
        Py_DECREF(payload);
        Py_DECREF(text);
        if (message == NULL)
            goto error;
        int rc = PyList_Append(messages, message);
        Py_DECREF(message);
        if (rc < 0)
            goto error;
        pos += hlen + (Py_ssize_t)length;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("Nn", messages, pos);
error:
    PyBuffer_Release(&view);
    Py_DECREF(messages);
    return NULL;
}

/* server_frame(opcode, data) -> bytes: one final, unmasked frame (server to
 * client), as geows.frames.frame_header(opcode, len) + payload, built in one
 * allocation. A str is sent as UTF-8, and only in a text frame: any other
 * opcode takes a bytes-like object, as the concatenation would. */
static PyObject *
server_frame(PyObject *self, PyObject *args)
{
    int opcode;
    PyObject *data, *encoded = NULL;
    if (!PyArg_ParseTuple(args, "iO:server_frame", &opcode, &data))
        return NULL;
    if (opcode < 0 || opcode > 15) {
        PyErr_SetString(PyExc_ValueError, "opcode must be 0 to 15");
        return NULL;
    }
    Py_buffer view;
    if (opcode == 1 && PyUnicode_Check(data)) {
        /* ASCII text is its own UTF-8; other text is encoded (not cached
         * in the str, which may outlive the frame). */
        if (PyUnicode_IS_ASCII(data)) {
            encoded = data;
            Py_INCREF(encoded);
            view.buf = PyUnicode_DATA(data);
            view.len = PyUnicode_GET_LENGTH(data);
        } else {
            encoded = PyUnicode_AsUTF8String(data);
            if (encoded == NULL)
                return NULL;
            view.buf = PyBytes_AS_STRING(encoded);
            view.len = PyBytes_GET_SIZE(encoded);
        }
    } else if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    Py_ssize_t n = view.len, hlen = n < 126 ? 2 : n < 0x10000 ? 4 : 10;
    PyObject *frame = PyBytes_FromStringAndSize(NULL, hlen + n);
    if (frame != NULL) {
        unsigned char *out = (unsigned char *)PyBytes_AS_STRING(frame);
        out[0] = (unsigned char)(0x80 | opcode);
        if (hlen == 2) {
            out[1] = (unsigned char)n;
        } else if (hlen == 4) {
            out[1] = 126;
            out[2] = (unsigned char)(n >> 8);
            out[3] = (unsigned char)n;
        } else {
            out[1] = 127;
            uint64_t len = (uint64_t)n;
            for (int i = 9; i >= 2; i--, len >>= 8)
                out[i] = (unsigned char)len;
        }
        memcpy(out + hlen, view.buf, (size_t)n);
    }
    if (encoded != NULL)
        Py_DECREF(encoded);
    else
        PyBuffer_Release(&view);
    return frame;
}

/* The environ key of a header name not seen before: "HTTP_" + the name
 * upper-cased with "-" as "_", as str methods would make it. */
static PyObject *
cgi_key(PyObject *name)
{
    if (!PyUnicode_IS_ASCII(name)) {
        /* Not a token (the parsers allow only ASCII): str.upper() decides. */
        PyObject *upper = PyObject_CallMethod(name, "upper", NULL);
        if (upper == NULL)
            return NULL;
        PyObject *dashed = PyObject_CallMethod(upper, "replace", "ss", "-", "_");
        Py_DECREF(upper);
        if (dashed == NULL)
            return NULL;
        PyObject *key = PyUnicode_FromFormat("HTTP_%U", dashed);
        Py_DECREF(dashed);
        return key;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(name);
    const char *src = (const char *)PyUnicode_DATA(name);
    PyObject *key = PyUnicode_New(5 + n, 127);
    if (key == NULL)
        return NULL;
    char *dst = (char *)PyUnicode_DATA(key);
    memcpy(dst, "HTTP_", 5);
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = src[i];
        if (c >= 'a' && c <= 'z')
            c -= 'a' - 'A';
        else if (c == '-')
            c = '_';
        dst[5 + i] = c;
    }
    return key;
}

/* Store value under key, after ","-joining an earlier value there. */
static int
cgi_store(PyObject *environ, PyObject *key, PyObject *value)
{
    PyObject *old = PyDict_GetItemWithError(environ, key);
    if (old == NULL) {
        if (PyErr_Occurred())
            return -1;
        return PyDict_SetItem(environ, key, value);
    }
    PyObject *joined = PyUnicode_FromFormat("%U,%U", old, value);
    if (joined == NULL)
        return -1;
    int rc = PyDict_SetItem(environ, key, joined);
    Py_DECREF(joined);
    return rc;
}

static PyObject *
cgi_headers(PyObject *self, PyObject *args)
{
    PyObject *environ, *headers, *cache;
    Py_ssize_t max_cache;
    if (!PyArg_ParseTuple(args, "O!O!O!n:cgi_headers", &PyDict_Type, &environ,
                          &PyList_Type, &headers, &PyDict_Type, &cache,
                          &max_cache))
        return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(headers); i++) {
        PyObject *item = PyList_GET_ITEM(headers, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
            !PyUnicode_Check(PyTuple_GET_ITEM(item, 0)) ||
            !PyUnicode_Check(PyTuple_GET_ITEM(item, 1))) {
            PyErr_SetString(PyExc_TypeError, "headers must be (str, str) pairs");
            return NULL;
        }
        PyObject *name = PyTuple_GET_ITEM(item, 0);
        PyObject *value = PyTuple_GET_ITEM(item, 1);
        if (PyUnicode_CompareWithASCIIString(name, "content-type") == 0) {
            if (PyDict_SetItemString(environ, "CONTENT_TYPE", value) < 0)
                return NULL;
            continue;
        }
        if (PyUnicode_CompareWithASCIIString(name, "content-length") == 0) {
            if (PyDict_SetItemString(environ, "CONTENT_LENGTH", value) < 0)
                return NULL;
            continue;
        }
        PyObject *key = PyDict_GetItemWithError(cache, name);
        if (key != NULL) {
            if (cgi_store(environ, key, value) < 0)
                return NULL;
            continue;
        }
        if (PyErr_Occurred())
            return NULL;
        /* "_" would be ambiguous with "-" once mangled: never trusted. */
        Py_ssize_t at = PyUnicode_FindChar(name, '_', 0,
                                           PyUnicode_GET_LENGTH(name), 1);
        if (at == -2)
            return NULL;
        if (at >= 0)
            continue;
        key = cgi_key(name);
        if (key == NULL)
            return NULL;
        int rc = 0;
        if (PyDict_GET_SIZE(cache) < max_cache)
            rc = PyDict_SetItem(cache, name, key);
        if (rc == 0)
            rc = cgi_store(environ, key, value);
        Py_DECREF(key);
        if (rc < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

/* Since Python 3.11 every greenlet that runs Python code gets its own
 * 16 KiB "data stack" chunk for its frames, allocated with
 * _PyObject_VirtualAlloc (the arena allocator: mmap) when it starts and
 * unmapped when it ends. With one greenlet per connection that is an
 * mmap, a page fault and a munmap per connection: measured at about 8 us
 * of a 10 us greenlet start on the benchmark machine. The arena allocator
 * is public API (PyObject_SetArenaAllocator): this one wraps the current
 * allocator and keeps up to `limit` freed chunks of exactly that size to
 * hand out again. Everything else (the 1 MiB obmalloc arenas, bigger
 * chunks) goes to the wrapped allocator unchanged. Arena calls are made
 * with the GIL held, so plain statics suffice; free-threaded builds, which
 * have no GIL, are left alone. */
#if PY_VERSION_HEX >= 0x030B0000 && !defined(Py_GIL_DISABLED)
#define GEOWS_CHUNK_CACHE 1
#define CHUNK_SIZE (16 * 1024)
#define CHUNK_CACHE_MAX 1024

static PyObjectArenaAllocator wrapped;
static void *chunks[CHUNK_CACHE_MAX];
static int chunk_count, chunk_limit, chunk_installed;
static unsigned long long chunk_hits, chunk_misses;

static void *
chunk_alloc(void *ctx, size_t size)
{
    if (size == CHUNK_SIZE) {
        if (chunk_count > 0) {
            chunk_hits++;
            return chunks[--chunk_count];
        }
        chunk_misses++;
    }
    return wrapped.alloc(wrapped.ctx, size);
}

static void
chunk_free(void *ctx, void *ptr, size_t size)
{
    if (size == CHUNK_SIZE && chunk_count < chunk_limit) {
        chunks[chunk_count++] = ptr;
        return;
    }
    wrapped.free(wrapped.ctx, ptr, size);
}

static PyObject *
install_chunk_cache(PyObject *self, PyObject *args)
{
    int limit;
    if (!PyArg_ParseTuple(args, "i:install_chunk_cache", &limit))
        return NULL;
    if (limit < 0 || limit > CHUNK_CACHE_MAX) {
        PyErr_Format(PyExc_ValueError, "limit must be 0 to %d",
                     CHUNK_CACHE_MAX);
        return NULL;
    }
    if (!chunk_installed) {
        PyObjectArenaAllocator mine = {NULL, chunk_alloc, chunk_free};
        PyObject_GetArenaAllocator(&wrapped);
        PyObject_SetArenaAllocator(&mine);
        chunk_installed = 1;
    }
    /* A lower limit releases what is now over it. */
    while (chunk_count > limit)
        wrapped.free(wrapped.ctx, chunks[--chunk_count], CHUNK_SIZE);
    chunk_limit = limit;
    Py_RETURN_TRUE;
}

static PyObject *
chunk_cache_stats(PyObject *self, PyObject *unused)
{
    return Py_BuildValue("{s:i,s:i,s:K,s:K}", "cached", chunk_count,
                         "limit", chunk_limit, "hits", chunk_hits,
                         "misses", chunk_misses);
}
#endif

static PyMethodDef methods[] = {
    {"apply_mask", apply_mask, METH_VARARGS, "XOR data with a 4-byte mask."},
#ifdef GEOWS_ATOMICS
    {"atomic_add64", atomic_add64, METH_VARARGS,
     "atomic_add64(buffer, pos, amount) -> int: atomically add a signed "
     "64-bit amount to the native-endian int64 at buffer[pos] (8-byte "
     "aligned) and return the new value (wrapping on overflow)."},
    {"atomic_load64", atomic_load64, METH_VARARGS,
     "atomic_load64(buffer, pos) -> int: atomically read the native-endian "
     "int64 at buffer[pos] (8-byte aligned)."},
    {"atomic_store64", atomic_store64, METH_VARARGS,
     "atomic_store64(buffer, pos, value): atomically write the native-endian "
     "int64 at buffer[pos] (8-byte aligned)."},
#endif
    {"parse_data_frames", parse_data_frames, METH_VARARGS,
     "parse_data_frames(buf, pos, max_size, message_cls) -> (messages, pos): "
     "whole masked single-frame text and binary messages from buf[pos:], up "
     "to the first frame that is anything else (see geows.protocol)."},
    {"server_frame", server_frame, METH_VARARGS,
     "server_frame(opcode, data) -> bytes: a final unmasked frame, header "
     "and payload (str as UTF-8, text frames only)."},
    {"cgi_headers", cgi_headers, METH_VARARGS,
     "cgi_headers(environ, headers, cache, max_cache): add a request's "
     "headers to a WSGI environ as CGI variables (see geows.wsgi)."},
#ifdef GEOWS_CHUNK_CACHE
    {"install_chunk_cache", install_chunk_cache, METH_VARARGS,
     "install_chunk_cache(limit) -> True: keep up to limit freed 16 KiB "
     "interpreter stack chunks (one per finished greenlet) for reuse; "
     "absent where it does not apply (before 3.11, free-threaded)."},
    {"chunk_cache_stats", chunk_cache_stats, METH_NOARGS,
     "chunk_cache_stats() -> dict: cached, limit, hits, misses."},
#endif
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "geows._speedups", NULL, -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&module);
}
