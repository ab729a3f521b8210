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
 * not exclude the other workers that map the same shared memory. */
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
