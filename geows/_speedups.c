/* Optional C speedup for geows.frames.apply_mask (same signature as the
 * pure-Python fallback): XOR a buffer with a 4-byte mask, 8 bytes at a time.
 * Built when a compiler is available; geows works without it. */
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

static PyMethodDef methods[] = {
    {"apply_mask", apply_mask, METH_VARARGS, "XOR data with a 4-byte mask."},
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
