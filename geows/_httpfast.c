/* geows._httpfast: an optional C fast path for geows.http.parse_head.
 *
 * parse_head(buf, max_request_line, max_header_line, max_headers, max_head)
 * handles only the common, plainly well-formed request head
 *
 *     METHOD SP TARGET SP ("HTTP/1.1" | "HTTP/1.0") CRLF
 *     *( NAME ":" OWS VALUE OWS CRLF )
 *     CRLF
 *
 * and returns (method, target, version, headers, index, consumed): exactly
 * the fields the pure-Python parser in geows/http.py produces for the same
 * bytes, plus the name -> joined value index that Request.get would build.
 *
 * Everything else gets None, and the Python parser decides: an incomplete
 * head, leading empty lines, a bare CR or LF, a control character, a limit
 * reached, any syntax error, a missing or repeated Host, any Content-Length
 * or Transfer-Encoding (body framing), more than MAX_FIELDS header lines.
 * Python stays the single authority on what is valid and on the status a
 * refusal gets: returning None is always safe, returning a tuple is allowed
 * only where Python accepts the same head with the same result.
 *
 * Bytes 0x80-0xFF (obs-text) are accepted in the target and in field values
 * and decoded as latin-1, as Python does. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* Header lines a head may have on the fast path; longer heads are rare and
 * go to Python.  Bounds the stack array of parsed fields. */
#define MAX_FIELDS 64

/* --- character classes -------------------------------------------------- */

enum {
    C_LINE = 1,   /* may appear on a head line: HTAB, SP, VCHAR, obs-text */
    C_TCHAR = 2,  /* token character (RFC 9110 5.6.2) */
    C_TARGET = 4, /* request-target character: VCHAR, obs-text */
};

static unsigned char char_class[256];

static void
init_char_classes(void)
{
    const char *tchar_punct = "!#$%&'*+-.^_`|~";
    int c;
    char_class['\t'] |= C_LINE;
    for (c = 0x20; c < 0x7F; c++)
        char_class[c] |= C_LINE;
    for (c = 0x21; c < 0x7F; c++)
        char_class[c] |= C_TARGET;
    for (c = 0x80; c < 0x100; c++)
        char_class[c] |= C_LINE | C_TARGET;
    for (c = '0'; c <= '9'; c++)
        char_class[c] |= C_TCHAR;
    for (c = 'a'; c <= 'z'; c++)
        char_class[c] |= C_TCHAR;
    for (c = 'A'; c <= 'Z'; c++)
        char_class[c] |= C_TCHAR;
    for (; *tchar_punct; tchar_punct++)
        char_class[(unsigned char)*tchar_punct] |= C_TCHAR;
}

/* Bytes at p (before end) that are all of the class `cls`. */
static Py_ssize_t
span_of(const unsigned char *p, const unsigned char *end, unsigned char cls)
{
    const unsigned char *q = p;
    while (q < end && (char_class[*q] & cls))
        q++;
    return q - p;
}

static unsigned char
ascii_lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

/* --- field names the fast path knows ----------------------------------- */

/* Lower-cased names looked up once per header line: the framing fields the
 * scan must spot, and the fields a WebSocket handshake (or a browser) sends.
 * Their str objects are made once, interned: for these names, no allocation
 * and no hashing per request, and dict lookups match on identity. */
#define KNOWN(name) {name, sizeof(name) - 1}
static const struct {
    const char *name;
    Py_ssize_t len;
} known_names[] = {
    KNOWN("host"), /* the order of the first three is the enum below */
    KNOWN("content-length"),
    KNOWN("transfer-encoding"),
    KNOWN("upgrade"),
    KNOWN("connection"),
    KNOWN("sec-websocket-key"),
    KNOWN("sec-websocket-version"),
    KNOWN("sec-websocket-extensions"),
    KNOWN("sec-websocket-protocol"),
    KNOWN("origin"),
    KNOWN("user-agent"),
    KNOWN("accept"),
    KNOWN("accept-encoding"),
    KNOWN("accept-language"),
    KNOWN("cache-control"),
    KNOWN("pragma"),
    KNOWN("cookie"),
    KNOWN("x-forwarded-for"),
    KNOWN("x-forwarded-proto"),
    KNOWN("x-real-ip"),
};
#define N_KNOWN ((int)(sizeof known_names / sizeof known_names[0]))
enum { UNKNOWN = -1, HOST = 0, CONTENT_LENGTH = 1, TRANSFER_ENCODING = 2 };

static PyObject *known_strs[N_KNOWN];

static int
init_known_strs(void)
{
    for (int i = 0; i < N_KNOWN; i++) {
        if (known_strs[i] == NULL)
            known_strs[i] = PyUnicode_InternFromString(known_names[i].name);
        if (known_strs[i] == NULL)
            return -1;
    }
    return 0;
}

/* Index in known_names of the n-byte name at p (ASCII case ignored), or
 * UNKNOWN. */
static int
known_name(const unsigned char *p, Py_ssize_t n)
{
    for (int i = 0; i < N_KNOWN; i++) {
        if (known_names[i].len != n)
            continue;
        const char *name = known_names[i].name;
        Py_ssize_t j = 0;
        while (j < n && ascii_lower(p[j]) == (unsigned char)name[j])
            j++;
        if (j == n)
            return i;
    }
    return UNKNOWN;
}

/* --- scanning: pure C, no Python objects -------------------------------- */

typedef struct {
    Py_ssize_t max_request_line, max_header_line, max_headers, max_head;
} limits_t;

typedef struct {
    Py_ssize_t name, name_len;   /* offsets into the buffer */
    Py_ssize_t value, value_len; /* the value without its surrounding OWS */
    int known;                   /* index in known_names, or UNKNOWN */
} field_t;

typedef struct {
    Py_ssize_t method_len;           /* the method starts at offset 0 */
    Py_ssize_t target, target_len;
    Py_ssize_t version;              /* 8 bytes: "HTTP/1.0" or "HTTP/1.1" */
    int http10;                      /* version is HTTP/1.0 (else HTTP/1.1) */
    Py_ssize_t nfields;
    field_t fields[MAX_FIELDS];
    Py_ssize_t consumed;             /* head length incl. the blank line */
} head_t;

/* Length of the line at p, without its CRLF; -1 when no CRLF ends it before
 * `end` or when it holds a byte no head line may hold (a control character
 * other than HTAB, so also a bare CR or a bare LF). */
static Py_ssize_t
line_length(const unsigned char *p, const unsigned char *end)
{
    Py_ssize_t n = span_of(p, end, C_LINE);
    if (end - (p + n) < 2 || p[n] != '\r' || p[n + 1] != '\n')
        return -1;
    return n;
}

/* Split the request line at buf[0:len] into h; 0 unless it is exactly
 * token SP target SP HTTP/1.x (what Python's split(" ") and checks accept,
 * the target restricted to VCHAR and obs-text). */
static int
split_request_line(const unsigned char *buf, Py_ssize_t len, head_t *h)
{
    const unsigned char *end = buf + len;
    Py_ssize_t m = span_of(buf, end, C_TCHAR);
    if (m == 0 || m == len || buf[m] != ' ')
        return 0;
    Py_ssize_t t = m + 1;
    Py_ssize_t tlen = span_of(buf + t, end, C_TARGET);
    if (tlen == 0 || t + tlen == len || buf[t + tlen] != ' ')
        return 0;
    Py_ssize_t v = t + tlen + 1;
    if (len - v != 8 || memcmp(buf + v, "HTTP/1.", 7) != 0)
        return 0;
    if (buf[v + 7] != '0' && buf[v + 7] != '1')
        return 0;
    h->method_len = m;
    h->target = t;
    h->target_len = tlen;
    h->version = v;
    h->http10 = buf[v + 7] == '0';
    return 1;
}

/* Split the header line at buf[start:start+len] into f; 0 unless it is
 * token ":" OWS value OWS (the line's bytes are already known to be legal:
 * the value may hold HTAB, SP, VCHAR and obs-text). */
static int
split_field(const unsigned char *buf, Py_ssize_t start, Py_ssize_t len,
            field_t *f)
{
    const unsigned char *p = buf + start, *end = p + len;
    Py_ssize_t n = span_of(p, end, C_TCHAR);
    if (n == 0 || n == len || p[n] != ':')
        return 0;
    const unsigned char *v = p + n + 1;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    f->name = start;
    f->name_len = n;
    f->value = v - buf;
    f->value_len = end - v;
    f->known = known_name(p, n);
    return 1;
}

/* Whether buf[0:n] starts with a head the fast path handles; if so, h holds
 * where its parts are.  Allocates nothing and cannot fail. */
static int
scan_head(const unsigned char *buf, Py_ssize_t n, const limits_t *lim,
          head_t *h)
{
    if (lim->max_request_line < 0 || lim->max_header_line < 0 ||
        lim->max_headers < 0 || lim->max_head < 0)
        return 0; /* nonsense limits: leave them to Python */
    /* A head not ended within max_head bytes is refused (431) by Python. */
    const unsigned char *end = buf + (n < lim->max_head ? n : lim->max_head);

    /* len == 0: a leading empty line, which Python skips (rare; punt). */
    Py_ssize_t len = line_length(buf, end);
    if (len <= 0 || len > lim->max_request_line ||
        !split_request_line(buf, len, h))
        return 0;

    Py_ssize_t pos = len + 2, hosts = 0;
    h->nfields = 0;
    for (;;) {
        len = line_length(buf + pos, end);
        if (len < 0)
            return 0;
        if (len == 0)
            break; /* the blank line ends the head */
        if (len > lim->max_header_line || h->nfields >= lim->max_headers ||
            h->nfields == MAX_FIELDS)
            return 0;
        field_t *f = &h->fields[h->nfields++];
        if (!split_field(buf, pos, len, f))
            return 0;
        if (f->known == HOST)
            hosts++;
        else if (f->known == CONTENT_LENGTH || f->known == TRANSFER_ENCODING)
            return 0; /* body framing: Python validates it */
        pos += len + 2;
    }
    /* HTTP/1.1 needs exactly one Host, HTTP/1.0 at most one (RFC 9112 3.2). */
    if (hosts > 1 || (hosts == 0 && !h->http10))
        return 0;
    h->consumed = pos + 2;
    return 1;
}

/* --- building the result ------------------------------------------------ */

/* buf[0:n] as str, bytes 0x80-0xFF decoded as latin-1 (as Python does). */
static PyObject *
latin1(const unsigned char *p, Py_ssize_t n)
{
    return PyUnicode_DecodeLatin1((const char *)p, n, NULL);
}

/* The name of field f (a token, so ASCII) as a lower-cased str. */
static PyObject *
lower_name(const unsigned char *buf, const field_t *f)
{
    if (f->known != UNKNOWN) {
        Py_INCREF(known_strs[f->known]);
        return known_strs[f->known];
    }
    PyObject *s = PyUnicode_New(f->name_len, 127);
    if (s == NULL)
        return NULL;
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(s);
    for (Py_ssize_t i = 0; i < f->name_len; i++)
        out[i] = ascii_lower(buf[f->name + i]);
    return s;
}

/* index[name] = value, or index[name] + ", " + value when name is already
 * there: what Request.get builds for repeated fields.  -1 on error. */
static int
index_add(PyObject *index, PyObject *name, PyObject *value)
{
    PyObject *old = PyDict_GetItemWithError(index, name); /* borrowed */
    if (old == NULL) {
        if (PyErr_Occurred())
            return -1;
        return PyDict_SetItem(index, name, value);
    }
    PyObject *joined = PyUnicode_FromFormat("%U, %U", old, value);
    if (joined == NULL)
        return -1;
    int rc = PyDict_SetItem(index, name, joined);
    Py_DECREF(joined);
    return rc;
}

/* Build the headers list and the index dict for the fields of h; -1 on
 * error (then both are NULL). */
static int
build_fields(const unsigned char *buf, const head_t *h, PyObject **headers,
             PyObject **index)
{
    *headers = PyList_New(h->nfields);
    *index = PyDict_New();
    if (*headers == NULL || *index == NULL)
        goto error;
    for (Py_ssize_t i = 0; i < h->nfields; i++) {
        const field_t *f = &h->fields[i];
        PyObject *name = lower_name(buf, f);
        PyObject *value = name ? latin1(buf + f->value, f->value_len) : NULL;
        PyObject *pair = value ? PyTuple_Pack(2, name, value) : NULL;
        int rc = pair ? index_add(*index, name, value) : -1;
        Py_XDECREF(name);
        Py_XDECREF(value);
        if (pair == NULL)
            goto error;
        PyList_SET_ITEM(*headers, i, pair); /* steals pair */
        if (rc < 0)
            goto error;
    }
    return 0;
error:
    Py_CLEAR(*headers);
    Py_CLEAR(*index);
    return -1;
}

/* (method, target, version, headers, index, consumed) for a scanned head. */
static PyObject *
build_result(const unsigned char *buf, const head_t *h)
{
    PyObject *headers, *index;
    if (build_fields(buf, h, &headers, &index) < 0)
        return NULL;
    PyObject *items[6] = {
        latin1(buf, h->method_len),
        latin1(buf + h->target, h->target_len),
        latin1(buf + h->version, 8),
        headers,
        index,
        PyLong_FromSsize_t(h->consumed),
    };
    PyObject *result = PyTuple_New(6);
    int ok = result != NULL;
    for (int i = 0; i < 6; i++)
        ok = ok && items[i] != NULL;
    if (!ok) {
        for (int i = 0; i < 6; i++)
            Py_XDECREF(items[i]);
        Py_XDECREF(result);
        return NULL;
    }
    for (int i = 0; i < 6; i++)
        PyTuple_SET_ITEM(result, i, items[i]); /* steals items[i] */
    return result;
}

/* --- the module function ------------------------------------------------ */

/* A limit argument as Py_ssize_t; huge ints clamp (as slice bounds do). */
static int
as_limit(PyObject *obj, Py_ssize_t *out)
{
    *out = PyNumber_AsSsize_t(obj, NULL);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *
parse_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError,
                     "parse_head() takes 5 arguments (%zd given)", nargs);
        return NULL;
    }
    limits_t lim;
    if (as_limit(args[1], &lim.max_request_line) < 0 ||
        as_limit(args[2], &lim.max_header_line) < 0 ||
        as_limit(args[3], &lim.max_headers) < 0 ||
        as_limit(args[4], &lim.max_head) < 0)
        return NULL;

    /* Held until we are done: a bytearray cannot be resized under us. */
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *buf = view.buf;
    head_t h; /* a few KB on the stack, no allocation */
    PyObject *result;
    if (scan_head(buf, view.len, &lim, &h))
        result = build_result(buf, &h);
    else {
        result = Py_None;
        Py_INCREF(result);
    }
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"parse_head", (PyCFunction)(void (*)(void))parse_head, METH_FASTCALL,
     "parse_head(buf, max_request_line, max_header_line, max_headers, "
     "max_head) -> (method, target, version, headers, index, consumed) for "
     "a plainly well-formed common request head, else None (let the "
     "pure-Python parser in geows.http decide)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "geows._httpfast", NULL, -1, methods,
};

PyMODINIT_FUNC
PyInit__httpfast(void)
{
    init_char_classes();
    if (init_known_strs() < 0)
        return NULL;
    return PyModule_Create(&module);
}
