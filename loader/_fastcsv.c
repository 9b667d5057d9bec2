/* The compiled path for plain CSV records: check, hash and write them as COPY text.
 *
 * A Scanner takes the lines of a block of the file, one after another, for as long as
 * each is a plain record: every field in the shape that
 * ``loader.processors.csv_copy.RowPattern`` accepts, written as it is or quoted whole
 * (``"..."`` with no quote inside; a quoted text may hold commas). For each such record
 * it does what the Python loop in ``loader.processors.csv_extract`` does for it: the
 * keyed BLAKE2b hash of its text, the check against the hashes stored by the previous
 * load, the check for a key seen before, and the COPY text line. It stops, without side
 * effects, at the first line it cannot take, and Python handles that line; so every
 * record the two paths could disagree on is decided by Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------ BLAKE2b (RFC 7693) */

static const uint64_t blake2b_iv[8] = {
    0x6A09E667F3BCC908ULL, 0xBB67AE8584CAA73BULL, 0x3C6EF372FE94F82BULL,
    0xA54FF53A5F1D36F1ULL, 0x510E527FADE682D1ULL, 0x9B05688C2B3E6C1FULL,
    0x1F83D9ABFB41BD6BULL, 0x5BE0CD19137E2179ULL};

static const uint8_t blake2b_sigma[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3}};

#define ROTR64(x, n) (((x) >> (n)) | ((x) << (64 - (n))))
#define G(a, b, c, d, x, y)              \
    do {                                 \
        v[a] = v[a] + v[b] + (x);        \
        v[d] = ROTR64(v[d] ^ v[a], 32);  \
        v[c] = v[c] + v[d];              \
        v[b] = ROTR64(v[b] ^ v[c], 24);  \
        v[a] = v[a] + v[b] + (y);        \
        v[d] = ROTR64(v[d] ^ v[a], 16);  \
        v[c] = v[c] + v[d];              \
        v[b] = ROTR64(v[b] ^ v[c], 63);  \
    } while (0)

static uint64_t load64(const uint8_t *p) {
    uint64_t w = 0;
    for (int i = 7; i >= 0; i--) w = (w << 8) | p[i];
    return w;
}

/* One compression of the 128-byte ``block``; ``t`` bytes so far, ``last`` for the final. */
static void blake2b_compress(uint64_t h[8], const uint8_t block[128], uint64_t t, int last) {
    uint64_t v[16], m[16];
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = blake2b_iv[i];
    }
    v[12] ^= t; /* the high word of the counter stays 0: records are far below 2^64 bytes */
    if (last) v[14] = ~v[14];
    for (int i = 0; i < 16; i++) m[i] = load64(block + 8 * i);
    for (int r = 0; r < 12; r++) {
        const uint8_t *s = blake2b_sigma[r];
        G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

/* The state after the key block of a keyed 8-byte BLAKE2b: every non-empty message
 * starts from it. */
static void blake2b_keyed_start(uint64_t h[8], const uint8_t *key, size_t keylen) {
    uint8_t block[128] = {0};
    for (int i = 0; i < 8; i++) h[i] = blake2b_iv[i];
    h[0] ^= 0x01010000ULL ^ ((uint64_t)keylen << 8) ^ 8;
    memcpy(block, key, keylen);
    blake2b_compress(h, block, 128, 0);
}

/* The keyed hash of a non-empty ``data``, as Python's
 * ``int.from_bytes(blake2b(data, digest_size=8, key=...).digest(), "big", signed=True)``. */
static int64_t blake2b_record(const uint64_t start[8], const uint8_t *data, size_t len) {
    uint64_t h[8];
    uint8_t block[128];
    uint64_t t = 128;
    memcpy(h, start, sizeof h);
    while (len > 128) {
        t += 128;
        blake2b_compress(h, data, t, 0);
        data += 128;
        len -= 128;
    }
    memset(block, 0, sizeof block);
    memcpy(block, data, len);
    t += len;
    blake2b_compress(h, block, t, 1);
    /* The digest is h[0] in little-endian bytes; read big-endian, it is h[0] swapped. */
    uint64_t x = h[0], swapped = 0;
    for (int i = 0; i < 8; i++) {
        swapped = (swapped << 8) | (x & 0xFF);
        x >>= 8;
    }
    return (int64_t)swapped;
}

/* ------------------------------------------------------------------ fields */

enum kind { K_TEXT, K_INT, K_DECIMAL, K_CODE, K_DATE, K_TIMESTAMP };

typedef struct {
    int kind;
    int size;     /* places of a decimal, letters of a code */
    int optional; /* may be empty (NULL) */
} FieldSpec;

#define MAX_FIELDS 1024

static int is_digit(uint8_t c) { return c >= '0' && c <= '9'; }

static int digits(const uint8_t *p, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (!is_digit(p[i])) return 0;
    return 1;
}

/* An end of plain text: not white space (as Python's ``\s``), a quote, a comma, a
 * backslash, NUL, nor any byte of a non-ASCII character (left to Python). */
static int text_end_ok(uint8_t c) {
    if (c >= 0x80 || c == 0 || c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1C && c <= 0x1F))
        return 0;
    return c != '"' && c != ',' && c != '\\';
}

/* Plain text: nothing to strip at either end, nothing COPY's text format would need
 * escaped. The content of a quoted field may hold commas. */
static int text_ok(const uint8_t *p, Py_ssize_t n, int quoted) {
    if (!(text_end_ok(p[0]) || (quoted && p[0] == ',')) ||
        !(text_end_ok(p[n - 1]) || (quoted && p[n - 1] == ',')))
        return 0;
    for (Py_ssize_t i = 1; i < n - 1; i++) {
        uint8_t c = p[i];
        if (c == '"' || (c == ',' && !quoted) || c == '\\' || c == '\t' || c == '\r' ||
            c == '\n' || c == 0)
            return 0;
    }
    return 1;
}

static int int_ok(const uint8_t *p, Py_ssize_t n) {
    if (n > 0 && (p[0] == '+' || p[0] == '-')) {
        p++;
        n--;
    }
    return n >= 1 && n <= 18 && digits(p, n);
}

static int decimal_ok(const uint8_t *p, Py_ssize_t n, int places) {
    Py_ssize_t i = 0, whole = 0;
    if (n > 0 && (p[0] == '+' || p[0] == '-')) i = 1;
    while (i + whole < n && is_digit(p[i + whole])) whole++;
    if (whole < 1 || whole > 15) return 0;
    i += whole;
    if (i == n) return 1;
    if (places == 0 || p[i] != '.') return 0;
    i++;
    Py_ssize_t fraction = n - i;
    return fraction >= 1 && fraction <= places && digits(p + i, fraction);
}

static int code_ok(const uint8_t *p, Py_ssize_t n, int size) {
    if (n != size) return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i] < 'A' || p[i] > 'Z') return 0;
    return 1;
}

static int two(const uint8_t *p) { return (p[0] - '0') * 10 + (p[1] - '0'); }

/* ``YYYY-MM-DD`` of a day that exists, except 29 February (left to Python) and year 0. */
static int date_ok(const uint8_t *p) {
    if (!digits(p, 4) || p[4] != '-' || !digits(p + 5, 2) || p[7] != '-' || !digits(p + 8, 2))
        return 0;
    if (p[0] == '0' && p[1] == '0' && p[2] == '0' && p[3] == '0') return 0;
    int month = two(p + 5), day = two(p + 8);
    if (month < 1 || month > 12 || day < 1) return 0;
    if (day <= 28) return 1;
    if (day <= 30) return month != 2;
    return day == 31 && (month == 1 || month == 3 || month == 5 || month == 7 || month == 8 ||
                         month == 10 || month == 12);
}

/* ``HH:MM``, ``HH:MM:SS`` or ``HH:MM:SS.f`` (1 to 6 digits): its length, else 0. */
static Py_ssize_t time_length(const uint8_t *p, Py_ssize_t n) {
    if (n < 5 || !digits(p, 2) || p[2] != ':' || !digits(p + 3, 2)) return 0;
    if (two(p) > 23 || p[3] > '5') return 0;
    if (n < 8 || p[5] != ':') return 5;
    if (!digits(p + 6, 2) || p[6] > '5') return 5;
    if (n < 10 || p[8] != '.') return 8;
    Py_ssize_t f = 0;
    while (9 + f < n && is_digit(p[9 + f])) f++;
    return f >= 1 && f <= 6 ? 9 + f : 8;
}

/* ``Z`` or ``±HH:MM`` with HH at most 23 and MM at most 59. */
static int zone_ok(const uint8_t *p, Py_ssize_t n) {
    if (n == 1) return p[0] == 'Z';
    return n == 6 && (p[0] == '+' || p[0] == '-') && digits(p + 1, 2) && two(p + 1) <= 23 &&
           p[3] == ':' && digits(p + 4, 2) && p[4] <= '5';
}

/* Days since 1970-01-01 of a proleptic Gregorian date, and back (H. Hinnant's algorithms). */
static int64_t days_from_civil(int64_t y, int m, int d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d) {
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

/* ------------------------------------------------------------------ output buffer */

typedef struct {
    char *data;
    Py_ssize_t size, capacity;
} Buffer;

static int buffer_reserve(Buffer *b, Py_ssize_t more) {
    if (b->size + more <= b->capacity) return 0;
    Py_ssize_t capacity = b->capacity ? b->capacity : 1 << 16;
    while (capacity < b->size + more) capacity *= 2;
    char *data = PyMem_Realloc(b->data, capacity);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->capacity = capacity;
    return 0;
}

static void put(Buffer *b, const void *p, Py_ssize_t n) {
    memcpy(b->data + b->size, p, n);
    b->size += n;
}

/* ------------------------------------------------------------------ a set of hashes */

/* The row hashes stored by the previous load, as a set of int64 with open addressing,
 * at most four fifths full (removed slots count as full until the next resize): about
 * 11 bytes a hash. The hashes are BLAKE2b output; after a multiply their top 32 bits,
 * scaled to the table (of any size below 2^32), pick the first slot to look at. */
typedef struct {
    PyObject_HEAD
    int64_t *values;
    uint8_t *state; /* per slot: 0 empty, 1 taken, 2 removed */
    Py_ssize_t capacity, count, used;
} Hashes;

static PyTypeObject HashesType;

static Py_ssize_t slot_of(const Hashes *h, int64_t value) {
    uint64_t mixed = (uint64_t)value * 0x9E3779B97F4A7C15ULL;
    return (Py_ssize_t)(((mixed >> 32) * (uint64_t)h->capacity) >> 32);
}

static Py_ssize_t next_slot(const Hashes *h, Py_ssize_t i) {
    return i + 1 == h->capacity ? 0 : i + 1;
}

/* The slot holding ``value``, else -1. */
static Py_ssize_t hashes_find(const Hashes *h, int64_t value) {
    if (h->capacity == 0) return -1;
    for (Py_ssize_t i = slot_of(h, value);; i = next_slot(h, i)) {
        if (h->state[i] == 0) return -1;
        if (h->state[i] == 1 && h->values[i] == value) return i;
    }
}

static int hashes_resize(Hashes *h, Py_ssize_t capacity) {
    if ((uint64_t)capacity >= (UINT64_C(1) << 32)) {
        PyErr_SetString(PyExc_OverflowError, "Hashes: too many hashes");
        return -1;
    }
    int64_t *values = PyMem_Calloc(capacity, sizeof *values);
    uint8_t *state = PyMem_Calloc(capacity, 1);
    if (values == NULL || state == NULL) {
        PyMem_Free(values);
        PyMem_Free(state);
        PyErr_NoMemory();
        return -1;
    }
    int64_t *old_values = h->values;
    uint8_t *old_state = h->state;
    Py_ssize_t old_capacity = h->capacity;
    h->values = values;
    h->state = state;
    h->capacity = capacity;
    h->used = h->count;
    for (Py_ssize_t j = 0; j < old_capacity; j++) {
        if (old_state[j] != 1) continue;
        Py_ssize_t i = slot_of(h, old_values[j]);
        while (state[i]) i = next_slot(h, i);
        state[i] = 1;
        values[i] = old_values[j];
    }
    PyMem_Free(old_values);
    PyMem_Free(old_state);
    return 0;
}

/* The capacity that holds ``count`` hashes four fifths full. */
static Py_ssize_t capacity_for(Py_ssize_t count) {
    Py_ssize_t capacity = count + count / 4 + 1;
    return capacity < 1024 ? 1024 : capacity;
}

static int hashes_add(Hashes *h, int64_t value) {
    if ((h->used + 1) * 5 > h->capacity * 4 &&
        hashes_resize(h, capacity_for(2 * (h->count + 1))) < 0)
        return -1;
    Py_ssize_t i = slot_of(h, value);
    while (h->state[i]) {
        if (h->state[i] == 1 && h->values[i] == value) return 0;
        i = next_slot(h, i);
    }
    h->state[i] = 1;
    h->values[i] = value;
    h->count++;
    h->used++;
    return 0;
}

/* Remove ``value``: 1 if it was there, else 0. */
static int hashes_discard(Hashes *h, int64_t value) {
    Py_ssize_t i = hashes_find(h, value);
    if (i < 0) return 0;
    h->state[i] = 2;
    h->count--;
    return 1;
}

static int hashes_value(PyObject *o, int64_t *value) {
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (overflow) return 0;
    *value = v;
    return 1;
}

static int Hashes_init(Hashes *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"values", NULL};
    PyObject *values = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O", kwlist, &values)) return -1;
    if (values == NULL) return 0;
    PyObject *it = PyObject_GetIter(values);
    if (it == NULL) return -1;
    PyObject *item;
    while ((item = PyIter_Next(it)) != NULL) {
        int64_t v;
        int ok = hashes_value(item, &v);
        Py_DECREF(item);
        if (ok == 0) PyErr_SetString(PyExc_OverflowError, "a hash is a 64-bit integer");
        if (ok <= 0 || hashes_add(self, v) < 0) {
            Py_DECREF(it);
            return -1;
        }
    }
    Py_DECREF(it);
    return PyErr_Occurred() ? -1 : 0;
}

static void Hashes_dealloc(Hashes *self) {
    PyMem_Free(self->values);
    PyMem_Free(self->state);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t Hashes_len(Hashes *self) { return self->count; }

static int Hashes_contains(Hashes *self, PyObject *o) {
    int64_t v;
    int ok = hashes_value(o, &v);
    if (ok <= 0) return ok;
    return hashes_find(self, v) >= 0;
}

static PyObject *Hashes_discard(Hashes *self, PyObject *o) {
    int64_t v;
    int ok = hashes_value(o, &v);
    if (ok < 0) return NULL;
    if (ok) hashes_discard(self, v);
    Py_RETURN_NONE;
}

static PyObject *Hashes_add(Hashes *self, PyObject *o) {
    int64_t v;
    int ok = hashes_value(o, &v);
    if (ok == 0) PyErr_SetString(PyExc_OverflowError, "a hash is a 64-bit integer");
    if (ok <= 0 || hashes_add(self, v) < 0) return NULL;
    Py_RETURN_NONE;
}

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

PyDoc_STRVAR(from_bytes_doc,
"from_bytes(data) -> Hashes\n\n"
"The hashes in ``data``, each 8 bytes big-endian, as PostgreSQL's ``int8send`` writes them.");

static PyObject *Hashes_from_bytes(PyObject *cls, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *p = view.buf;
    Hashes *h = NULL;
    if (view.len % 8) {
        PyErr_SetString(PyExc_ValueError, "not a whole number of 8-byte hashes");
        goto done;
    }
    h = (Hashes *)PyObject_CallNoArgs(cls);
    if (h == NULL) goto done;
    /* Room for them all at once: no rehashing. */
    Py_ssize_t capacity = capacity_for(view.len / 8 + 1);
    if (capacity > h->capacity && hashes_resize(h, capacity) < 0) {
        Py_CLEAR(h);
        goto done;
    }
    for (Py_ssize_t i = 0; i < view.len; i += 8) {
        uint64_t v = (uint64_t)be32(p + i) << 32 | be32(p + i + 4);
        if (hashes_add(h, (int64_t)v) < 0) {
            Py_CLEAR(h);
            goto done;
        }
    }
done:
    PyBuffer_Release(&view);
    return (PyObject *)h;
}

typedef struct {
    PyObject_HEAD
    Hashes *owner;
    Py_ssize_t at;
} HashesIter;

static void HashesIter_dealloc(HashesIter *self) {
    Py_XDECREF(self->owner);
    PyObject_Free(self);
}

static PyObject *HashesIter_next(HashesIter *self) {
    Hashes *h = self->owner;
    while (self->at < h->capacity) {
        Py_ssize_t i = self->at++;
        if (h->state[i] == 1) return PyLong_FromLongLong(h->values[i]);
    }
    return NULL;
}

static PyTypeObject HashesIterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "loader._fastcsv.HashesIterator",
    .tp_basicsize = sizeof(HashesIter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)HashesIter_dealloc,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)HashesIter_next,
};

static PyObject *Hashes_iter(Hashes *self) {
    HashesIter *it = PyObject_New(HashesIter, &HashesIterType);
    if (it == NULL) return NULL;
    Py_INCREF(self);
    it->owner = self;
    it->at = 0;
    return (PyObject *)it;
}

static PySequenceMethods Hashes_as_sequence = {
    .sq_length = (lenfunc)Hashes_len,
    .sq_contains = (objobjproc)Hashes_contains,
};

static PyMethodDef Hashes_methods[] = {
    {"discard", (PyCFunction)Hashes_discard, METH_O, "Remove a hash if present."},
    {"add", (PyCFunction)Hashes_add, METH_O, "Add a hash."},
    {"from_bytes", (PyCFunction)Hashes_from_bytes, METH_O | METH_CLASS, from_bytes_doc},
    {NULL, NULL, 0, NULL}};

static PyTypeObject HashesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "loader._fastcsv.Hashes",
    .tp_basicsize = sizeof(Hashes),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Hashes(values=()): a set of signed 64-bit hashes, for the stored row hashes.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Hashes_init,
    .tp_dealloc = (destructor)Hashes_dealloc,
    .tp_as_sequence = &Hashes_as_sequence,
    .tp_iter = (getiterfunc)Hashes_iter,
    .tp_methods = Hashes_methods,
};

/* ------------------------------------------------------------------ the line of each key */

/* SipHash-2-4 with its 128-bit output (Aumasson and Bernstein's reference). Each
 * KeyLines keys it at random, so no file can be written to give two keys one digest. */
#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                            \
    do {                                                                                    \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                           \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                              \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                              \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                           \
    } while (0)

static void siphash128(uint64_t k0, uint64_t k1, const uint8_t *p, size_t n, uint64_t out[2]) {
    uint64_t v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1 ^ 0xee;
    uint64_t v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
    const uint8_t *end = p + (n & ~(size_t)7);
    for (; p != end; p += 8) {
        uint64_t m = load64(p);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)n << 56;
    for (size_t i = 0; i < (n & 7); i++) b |= (uint64_t)p[i] << (8 * i);
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xee;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    out[0] = v0 ^ v1 ^ v2 ^ v3;
    v1 ^= 0xdd;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    out[1] = v0 ^ v1 ^ v2 ^ v3;
}

/* The first line of each key a load staged: what a dict of key to line holds, in a
 * sixth of the memory. A key that is text, or a tuple of texts (every key the scanner
 * sees), is held as 16 bytes: 88 bits of the 128-bit digest of its text, and its line
 * in 40 bits. Two keys share those 88 bits with a chance of about n^2 / 2^89: one in
 * 10^15 for a file of a million keys. The table is sized for the keys expected and kept
 * at most four fifths full, 20 bytes a key in all; a dict of the same str keys and int
 * lines takes about 115. Other keys (a parsed number, say) go to a dict, as they are: no
 * key of one kind equals one of the other, as in a dict. */
#define LINE_BITS 40
#define LINE_MASK ((UINT64_C(1) << LINE_BITS) - 1)

typedef struct {
    uint64_t a;
    uint64_t b; /* the digest's top 24 bits of its second half, then the line; 0: empty */
} KeySlot;

typedef struct {
    PyObject_HEAD
    KeySlot *slots;
    Py_ssize_t capacity, count;
    uint64_t k0, k1;
    PyObject *other; /* dict: the keys that are not text */
    Buffer text;     /* a key's text, as digested */
} KeyLines;

static PyTypeObject KeyLinesType;

/* The slot of digest (a, high): where it is, or the empty slot where it would go. The
 * table has any size below 2^32: the digest's top 32 bits, scaled to it, pick the first
 * slot to look at. */
static KeySlot *keylines_slot(const KeyLines *k, uint64_t a, uint64_t high) {
    Py_ssize_t i = (Py_ssize_t)(((a >> 32) * (uint64_t)k->capacity) >> 32);
    while (k->slots[i].b && (k->slots[i].a != a || (k->slots[i].b & ~LINE_MASK) != high))
        i = i + 1 == k->capacity ? 0 : i + 1;
    return &k->slots[i];
}

/* Room for ``count`` keys, four fifths full: a new table that takes the keys held. */
static int keylines_resize(KeyLines *k, Py_ssize_t count) {
    Py_ssize_t capacity = count + count / 4 + 1;
    if (capacity < 1024) capacity = 1024;
    if (capacity >= ((Py_ssize_t)1 << 31)) {
        PyErr_SetString(PyExc_OverflowError, "KeyLines: too many keys");
        return -1;
    }
    KeySlot *slots = PyMem_Calloc(capacity, sizeof *slots), *old = k->slots;
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t old_capacity = k->capacity;
    k->slots = slots;
    k->capacity = capacity;
    for (Py_ssize_t j = 0; j < old_capacity; j++)
        if (old[j].b) *keylines_slot(k, old[j].a, old[j].b & ~LINE_MASK) = old[j];
    PyMem_Free(old);
    return 0;
}

/* The line of the key whose text is in ``k->text``, else 0 after recording ``line``
 * for it when ``line`` is not 0; -1 on error. */
static int64_t keylines_digested(KeyLines *k, int64_t line) {
    if (line && (k->count + 1) * 5 > k->capacity * 4 &&
        keylines_resize(k, k->count ? 2 * k->count : 1024) < 0)
        return -1;
    if ((uint64_t)line > LINE_MASK) {
        PyErr_SetString(PyExc_OverflowError, "KeyLines: a line past 2^40");
        return -1;
    }
    uint64_t d[2];
    siphash128(k->k0, k->k1, (const uint8_t *)k->text.data, (size_t)k->text.size, d);
    uint64_t high = d[1] & ~LINE_MASK;
    KeySlot *slot = keylines_slot(k, d[0], high);
    if (slot->b) return (int64_t)(slot->b & LINE_MASK);
    if (line) {
        *slot = (KeySlot){d[0], high | (uint64_t)line};
        k->count++;
    }
    return 0;
}

/* A text part of a key, written as its length and its UTF-8 bytes. The text of a key
 * is "s" and its one part, or "t" and each part of a tuple (``keylines_start``). */
static int keylines_part(KeyLines *k, const char *p, Py_ssize_t n) {
    if (buffer_reserve(&k->text, n + 8) < 0) return -1;
    uint64_t size = (uint64_t)n;
    put(&k->text, &size, 8);
    put(&k->text, p, n);
    return 0;
}

/* Begin a key's text in ``k->text``: "s" for a str, "t" for a tuple. */
static int keylines_start(KeyLines *k, int tuple) {
    k->text.size = 0;
    if (buffer_reserve(&k->text, 1) < 0) return -1;
    put(&k->text, tuple ? "t" : "s", 1);
    return 0;
}

/* Add ``o`` to the key's text: 1, or 0 when it is not text, -1 on error. */
static int keylines_str(KeyLines *k, PyObject *o) {
    if (!PyUnicode_Check(o)) return 0;
    Py_ssize_t n;
    const char *p = PyUnicode_AsUTF8AndSize(o, &n);
    if (p == NULL) { /* a lone surrogate: the key is kept as it is */
        PyErr_Clear();
        return 0;
    }
    return keylines_part(k, p, n) < 0 ? -1 : 1;
}

/* Write the text of ``key`` to ``k->text``: 1, or 0 when it is not text, -1 on error. */
static int keylines_text(KeyLines *k, PyObject *key) {
    int tuple = PyTuple_Check(key);
    if (keylines_start(k, tuple) < 0) return -1;
    if (!tuple) return keylines_str(k, key);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(key); i++) {
        int text = keylines_str(k, PyTuple_GET_ITEM(key, i));
        if (text <= 0) return text;
    }
    return 1;
}

/* Whether ``__init__`` ran; else a RuntimeError is set. */
static int keylines_ready(KeyLines *k) {
    if (k->other != NULL) return 1;
    PyErr_SetString(PyExc_RuntimeError, "KeyLines.__init__ was not called");
    return 0;
}

static int KeyLines_init(KeyLines *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"seed", "expected", NULL};
    Py_buffer seed;
    Py_ssize_t expected = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*|n", kwlist, &seed, &expected)) return -1;
    if (seed.len != 16) {
        PyBuffer_Release(&seed);
        PyErr_SetString(PyExc_ValueError, "seed: 16 bytes");
        return -1;
    }
    self->k0 = load64(seed.buf);
    self->k1 = load64((const uint8_t *)seed.buf + 8);
    PyBuffer_Release(&seed);
    PyMem_Free(self->slots);
    self->slots = NULL;
    self->capacity = self->count = 0;
    if (expected > 0 && keylines_resize(self, expected) < 0) return -1;
    Py_XSETREF(self->other, PyDict_New());
    return self->other == NULL ? -1 : 0;
}

static void KeyLines_dealloc(KeyLines *self) {
    PyMem_Free(self->slots);
    PyMem_Free(self->text.data);
    Py_XDECREF(self->other);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t KeyLines_len(KeyLines *self) {
    return self->count + (self->other ? PyDict_GET_SIZE(self->other) : 0);
}

PyDoc_STRVAR(keylines_add_doc,
"add(key, line) -> int | None\n\n"
"The line of ``key`` if it has one; else None, and ``key`` now has ``line`` (from 1).");

static PyObject *KeyLines_add(KeyLines *self, PyObject *args) {
    PyObject *key;
    long long line;
    if (!PyArg_ParseTuple(args, "OL", &key, &line) || !keylines_ready(self)) return NULL;
    if (line < 1) {
        PyErr_SetString(PyExc_ValueError, "line: from 1");
        return NULL;
    }
    int text = keylines_text(self, key);
    if (text < 0) return NULL;
    if (text) {
        int64_t found = keylines_digested(self, line);
        if (found < 0) return NULL;
        if (found) return PyLong_FromLongLong(found);
        Py_RETURN_NONE;
    }
    PyObject *found = PyDict_GetItemWithError(self->other, key);
    if (found != NULL) return Py_NewRef(found);
    if (PyErr_Occurred()) return NULL;
    PyObject *at = PyLong_FromLongLong(line);
    if (at == NULL) return NULL;
    int failed = PyDict_SetItem(self->other, key, at);
    Py_DECREF(at);
    if (failed) return NULL;
    Py_RETURN_NONE;
}

static PyObject *KeyLines_line_of(KeyLines *self, PyObject *key) {
    if (!keylines_ready(self)) return NULL;
    int text = keylines_text(self, key);
    if (text < 0) return NULL;
    if (text) {
        int64_t found = self->count ? keylines_digested(self, 0) : 0;
        if (found < 0) return NULL;
        if (found) return PyLong_FromLongLong(found);
    } else {
        PyObject *found = PyDict_GetItemWithError(self->other, key);
        if (found != NULL) return Py_NewRef(found);
        if (PyErr_Occurred()) return NULL;
    }
    PyErr_SetObject(PyExc_KeyError, key);
    return NULL;
}

static PySequenceMethods KeyLines_as_sequence = {.sq_length = (lenfunc)KeyLines_len};

static PyMethodDef KeyLines_methods[] = {
    {"add", (PyCFunction)KeyLines_add, METH_VARARGS, keylines_add_doc},
    {"line_of", (PyCFunction)KeyLines_line_of, METH_O,
     "line_of(key) -> int\n\nThe line of ``key``; KeyError if it has none."},
    {NULL, NULL, 0, NULL}};

static PyTypeObject KeyLinesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "loader._fastcsv.KeyLines",
    .tp_basicsize = sizeof(KeyLines),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "KeyLines(seed, expected=0): the first line of each key of one load. ``seed``,\n"
              "16 random bytes, keys its digests; ``expected`` keys fit without growing.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)KeyLines_init,
    .tp_dealloc = (destructor)KeyLines_dealloc,
    .tp_as_sequence = &KeyLines_as_sequence,
    .tp_methods = KeyLines_methods,
};

/* ------------------------------------------------------------------ the scanner */

typedef struct {
    PyObject_HEAD
    int nfields;
    FieldSpec fields[MAX_FIELDS];
    int norder;
    int order[MAX_FIELDS]; /* header positions of the output fields, in output order */
    int nkey;
    int key[MAX_FIELDS];   /* header positions of the key fields */
    char *prefix;          /* the partition value as COPY text, and a tab */
    Py_ssize_t prefix_size;
    uint64_t hash_start[8];
    Hashes *stored;        /* the stored hashes not yet matched */
    KeyLines *keys;        /* the line of each staged key */
    PyObject *raws;        /* dict: line -> text, for up to ``keep`` records */
    Py_ssize_t keep;
    Buffer out;
    Buffer matched;        /* int64 hashes of the records that matched ``stored`` */
    Buffer matched_at;     /* int64 lines of those records */
} Scanner;

static void Scanner_dealloc(Scanner *self) {
    Py_XDECREF(self->stored);
    PyMem_Free(self->matched.data);
    PyMem_Free(self->matched_at.data);
    Py_XDECREF(self->keys);
    Py_XDECREF(self->raws);
    PyMem_Free(self->prefix);
    PyMem_Free(self->out.data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int int_list(PyObject *seq, int *into, int *count, int limit, const char *what) {
    PyObject *fast = PySequence_Fast(seq, what);
    if (fast == NULL) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n > MAX_FIELDS) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "%s: too many fields", what);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if (v == -1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
        if (v < 0 || v >= limit) {
            Py_DECREF(fast);
            PyErr_Format(PyExc_ValueError, "%s: position %ld out of range", what, v);
            return -1;
        }
        into[i] = (int)v;
    }
    *count = (int)n;
    Py_DECREF(fast);
    return 0;
}

static const char *kind_names[] = {"text", "integer", "decimal", "code", "date", "timestamp"};

static int Scanner_init(Scanner *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fields", "order", "key", "prefix", "salt", "stored", "keys",
                             "raws", "keep", NULL};
    PyObject *fields, *order, *key, *stored, *keys, *raws;
    Py_buffer prefix, salt;
    Py_ssize_t keep;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOy*y*OOOn", kwlist, &fields, &order, &key,
                                     &prefix, &salt, &stored, &keys, &raws, &keep))
        return -1;
    int result = -1;
    PyObject *fast = NULL;
    if (salt.len > 64) {
        PyErr_SetString(PyExc_ValueError, "salt: at most 64 bytes");
        goto done;
    }
    if (!PyObject_TypeCheck(stored, &HashesType) || !PyObject_TypeCheck(keys, &KeyLinesType) ||
        !PyDict_Check(raws)) {
        PyErr_SetString(PyExc_TypeError, "stored must be Hashes, keys KeyLines, raws a dict");
        goto done;
    }
    if (!keylines_ready((KeyLines *)keys)) goto done;
    fast = PySequence_Fast(fields, "fields must be a sequence of (kind, size, optional)");
    if (fast == NULL) goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n < 1 || n > MAX_FIELDS) {
        PyErr_SetString(PyExc_ValueError, "fields: between 1 and 1024 needed");
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *kind;
        int size, optional;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "sip", &kind, &size, &optional))
            goto done;
        int k = -1;
        for (int j = 0; j < 6; j++)
            if (strcmp(kind, kind_names[j]) == 0) k = j;
        if (k < 0 || size < 0 || (k == K_CODE && size < 1) || (k == K_DECIMAL && size > 13)) {
            PyErr_Format(PyExc_ValueError, "fields: unknown field (%s, %d)", kind, size);
            goto done;
        }
        self->fields[i] = (FieldSpec){k, size, optional};
    }
    self->nfields = (int)n;
    if (int_list(order, self->order, &self->norder, self->nfields, "order") < 0 ||
        int_list(key, self->key, &self->nkey, self->nfields, "key") < 0)
        goto done;
    if (self->nkey < 1) {
        PyErr_SetString(PyExc_ValueError, "key: at least one field");
        goto done;
    }
    PyMem_Free(self->prefix); /* __init__ may be called again */
    self->prefix = PyMem_Malloc(prefix.len + 1);
    if (self->prefix == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(self->prefix, prefix.buf, prefix.len);
    self->prefix_size = prefix.len;
    blake2b_keyed_start(self->hash_start, salt.buf, (size_t)salt.len);
    Py_INCREF(stored);
    Py_XSETREF(self->stored, (Hashes *)stored);
    Py_INCREF(keys);
    Py_XSETREF(self->keys, (KeyLines *)keys);
    Py_INCREF(raws);
    Py_XSETREF(self->raws, raws);
    self->keep = keep;
    result = 0;
done:
    Py_XDECREF(fast);
    PyBuffer_Release(&prefix);
    PyBuffer_Release(&salt);
    return result;
}

/* Whether ``p[0:n]`` is valid UTF-8 as Python decodes it (no overlong forms, no
 * surrogates, nothing past U+10FFFF). */
static int utf8_ok(const uint8_t *p, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int more;
        uint8_t low = 0x80, high = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            more = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            more = 2;
            if (c == 0xE0) low = 0xA0;
            if (c == 0xED) high = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            more = 3;
            if (c == 0xF0) low = 0x90;
            if (c == 0xF4) high = 0x8F;
        } else {
            return 0;
        }
        if (i + more >= n) return 0;
        if (p[i + 1] < low || p[i + 1] > high) return 0;
        for (int j = 2; j <= more; j++)
            if (p[i + j] < 0x80 || p[i + j] > 0xBF) return 0;
        i += more + 1;
    }
    return 1;
}

/* Whether every byte of ``p[0:n]`` is ASCII, eight bytes at a time. */
static int ascii_only(const uint8_t *p, Py_ssize_t n) {
    uint64_t high = 0;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t word;
        memcpy(&word, p + i, 8);
        high |= word;
    }
    for (; i < n; i++) high |= p[i];
    return (high & 0x8080808080808080ULL) == 0;
}

typedef struct {
    Py_ssize_t start, end; /* the field's text, without the quotes of a quoted one */
    int quoted;
} Span;

/* The output text of a timestamp field ``p[0:n]`` into ``b``; 0 when not plain. */
static int timestamp_out(const uint8_t *p, Py_ssize_t n, Buffer *b) {
    if (n < 10 || !date_ok(p)) return 0;
    Py_ssize_t local = 10;
    if (n > 10 && (p[10] == 'T' || p[10] == ' ')) {
        Py_ssize_t t = time_length(p + 11, n - 11);
        if (t) local = 11 + t;
    }
    if (local == n) {
        put(b, p, n);
        return 1;
    }
    if (!zone_ok(p + local, n - local) || local == 10) return 0; /* a zone needs a time */
    if (p[local] == 'Z') {
        put(b, p, local);
        return 1;
    }
    const uint8_t *z = p + local;
    int64_t offset = (int64_t)(two(z + 1) * 60 + two(z + 4)) * (z[0] == '-' ? -1 : 1);
    int64_t year = (p[0] - '0') * 1000 + (p[1] - '0') * 100 + two(p + 2);
    int64_t minutes = (days_from_civil(year, two(p + 5), two(p + 8)) * 24 + two(p + 11)) * 60 +
                      two(p + 14) - offset;
    int64_t days = minutes >= 0 ? minutes / 1440 : -((-minutes + 1439) / 1440);
    int64_t of_day = minutes - days * 1440;
    int month, day;
    civil_from_days(days, &year, &month, &day);
    if (year < 1 || year > 9999) return 0;
    char head[48];
    snprintf(head, sizeof head, "%04d-%02d-%02d %02d:%02d", (int)year, month, day,
             (int)(of_day / 60), (int)(of_day % 60));
    put(b, head, 16);
    put(b, p + 16, local - 16);
    return 1;
}

/* Split a record into the header's number of fields, each either unquoted (holding no
 * quote) or quoted whole: a quote right after the comma, the next quote right before
 * the next comma or the end. These are the records the ``csv`` module reads as the text
 * between the commas or quotes, and that hold no quote still open. 0 for any other. */
static int split_record(Scanner *self, const uint8_t *p, Py_ssize_t n, Span *spans) {
    Py_ssize_t i = 0;
    int count = 0;
    for (;;) {
        if (count == self->nfields) return 0;
        Span *s = &spans[count++];
        if (i < n && p[i] == '"') {
            const uint8_t *close = memchr(p + i + 1, '"', (size_t)(n - i - 1));
            if (close == NULL) return 0;
            Py_ssize_t end = close - p;
            if (end + 1 < n && p[end + 1] != ',') return 0;
            *s = (Span){i + 1, end, 1};
            i = end + 1;
        } else {
            const uint8_t *comma = memchr(p + i, ',', (size_t)(n - i));
            Py_ssize_t end = comma != NULL ? comma - p : n;
            if (memchr(p + i, '"', (size_t)(end - i)) != NULL) return 0;
            *s = (Span){i, end, 0};
            i = end;
        }
        if (i == n) break;
        i++; /* the comma */
    }
    return count == self->nfields;
}

/* Check the fields of a split record and write its output fields to ``b`` (which has
 * room for the record's length plus the prefix, tabs and hash); 0 when a field is not
 * plain, with ``b`` as it was. */
static int record_out(Scanner *self, const uint8_t *p, Span *spans, Buffer *b) {
    for (int i = 0; i < self->nfields; i++) {
        const uint8_t *f = p + spans[i].start;
        Py_ssize_t len = spans[i].end - spans[i].start;
        FieldSpec *spec = &self->fields[i];
        if (len == 0) {
            if (!spec->optional) return 0;
            continue;
        }
        int ok = 0;
        switch (spec->kind) {
        case K_TEXT: ok = text_ok(f, len, spans[i].quoted); break;
        case K_INT: ok = int_ok(f, len); break;
        case K_DECIMAL: ok = decimal_ok(f, len, spec->size); break;
        case K_CODE: ok = code_ok(f, len, spec->size); break;
        case K_DATE: ok = len == 10 && date_ok(f); break;
        case K_TIMESTAMP: {
            /* The longest plain timestamp: date, separator, time to microseconds, zone. */
            char text[32];
            Buffer scratch = {text, 0, sizeof text};
            ok = len <= 32 && timestamp_out(f, len, &scratch);
            break;
        }
        }
        if (!ok) return 0;
    }
    Py_ssize_t before = b->size;
    put(b, self->prefix, self->prefix_size);
    for (int j = 0; j < self->norder; j++) {
        int i = self->order[j];
        const uint8_t *f = p + spans[i].start;
        Py_ssize_t len = spans[i].end - spans[i].start;
        if (j) put(b, "\t", 1);
        if (len == 0) {
            put(b, "\\N", 2);
        } else if (self->fields[i].kind == K_TIMESTAMP) {
            if (!timestamp_out(f, len, b)) {
                b->size = before;
                return 0;
            }
        } else {
            put(b, f, len);
        }
    }
    return 1;
}

/* The line of the record's key if an earlier record had it, else 0 after recording
 * ``line`` for it; -1 on error. The key's text is written as ``keylines_text`` writes
 * that of the str, or tuple of str, that Python reads for it. */
static int64_t record_key_line(Scanner *self, const uint8_t *p, Span *spans, int64_t line) {
    KeyLines *k = self->keys;
    if (keylines_start(k, self->nkey > 1) < 0) return -1;
    for (int i = 0; i < self->nkey; i++) {
        Span s = spans[self->key[i]];
        if (keylines_part(k, (const char *)p + s.start, s.end - s.start) < 0) return -1;
    }
    return keylines_digested(k, line);
}

PyDoc_STRVAR(scan_doc,
"scan(data, pos, line) -> (pos, line, read, written, text, matched, matched_at)\n\n"
"Take the plain records of ``data`` (bytes of whole lines) from byte ``pos``, where\n"
"``line`` lines precede, until a line it cannot take or a line without its line feed.\n"
"Returns where it stopped, the line count there, the records read and written, the\n"
"COPY text of the written ones, and the hashes and lines (native int64 bytes) of the\n"
"records that matched a stored hash, which leave ``stored``.");

static int put_int64(Buffer *b, int64_t value) {
    if (buffer_reserve(b, 8) < 0) return -1;
    put(b, &value, 8);
    return 0;
}

/* Records matched without the GIL at a time, at most: room reserved for their hashes. */
#define MATCHED_RUN 4096

/* Take, from ``*pos`` on, the lines that are plain unquoted records matching a stored
 * hash (most lines of a reload), up to ``room`` of them; returns how many. Touches no
 * Python object, so the caller lets go of the GIL around it: two files hash side by
 * side on two cores. It stops before the first line that needs more than that (a
 * quote, a NUL, bad UTF-8, a hash not stored, no line feed), which the caller takes
 * as before; blank lines are passed over. */
static Py_ssize_t take_matched(Scanner *self, Hashes *stored, const uint8_t *data,
                               Py_ssize_t size, Py_ssize_t *pos, Py_ssize_t *line,
                               Py_ssize_t room) {
    Py_ssize_t taken = 0;
    while (taken < room && *pos < size && stored->count) {
        const uint8_t *start = data + *pos;
        const uint8_t *nl = memchr(start, '\n', (size_t)(size - *pos));
        if (nl == NULL) break;
        Py_ssize_t n = nl - start, next = *pos + n + 1;
        if (n > 0 && start[n - 1] == '\r') n--;
        if (n > 0) {
            if (memchr(start, '"', (size_t)n) != NULL || memchr(start, 0, (size_t)n) != NULL ||
                (!ascii_only(start, n) && !utf8_ok(start, n)))
                break;
            int64_t digest = blake2b_record(self->hash_start, start, (size_t)n);
            if (!hashes_discard(stored, digest)) break;
            int64_t at = *line + 1;
            put(&self->matched, &digest, 8);
            put(&self->matched_at, &at, 8);
            taken++;
        }
        *pos = next;
        (*line)++;
    }
    return taken;
}

static PyObject *Scanner_scan(Scanner *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t pos, line;
    if (!PyArg_ParseTuple(args, "y*nn", &view, &pos, &line)) return NULL;
    const uint8_t *data = view.buf;
    Py_ssize_t size = view.len, read = 0, written = 0;
    Span spans[MAX_FIELDS];
    Buffer *b = &self->out;
    b->size = self->matched.size = self->matched_at.size = 0;
    PyObject *result = NULL;
    if (self->stored == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Scanner.__init__ was not called");
        goto done;
    }
    if (pos < 0 || pos > size) {
        PyErr_SetString(PyExc_ValueError, "pos is outside data");
        goto done;
    }
    while (pos < size) {
        if (self->stored->count) {
            if (buffer_reserve(&self->matched, 8 * MATCHED_RUN) < 0 ||
                buffer_reserve(&self->matched_at, 8 * MATCHED_RUN) < 0)
                goto done;
            Hashes *stored = self->stored;
            Py_ssize_t taken;
            Py_INCREF(stored);
            Py_BEGIN_ALLOW_THREADS
            taken = take_matched(self, stored, data, size, &pos, &line, MATCHED_RUN);
            Py_END_ALLOW_THREADS
            Py_DECREF(stored);
            read += taken;
            if (taken == MATCHED_RUN || pos >= size) continue;
        }
        const uint8_t *start = data + pos;
        const uint8_t *nl = memchr(start, '\n', size - pos);
        if (nl == NULL) break;
        Py_ssize_t n = nl - start, next = pos + (nl - start) + 1;
        if (n > 0 && start[n - 1] == '\r') n--;
        if (n == 0) { /* a blank line */
            pos = next;
            line++;
            continue;
        }
        /* NUL and bad UTF-8 are Python's errors; a quote left open starts a record of
         * several lines, which Python puts together: a line with a quote must split
         * before it counts as a record. A line without one always is a record. */
        int quoted = memchr(start, '"', (size_t)n) != NULL;
        if (memchr(start, 0, (size_t)n) != NULL || (!ascii_only(start, n) && !utf8_ok(start, n)) ||
            (quoted && !split_record(self, start, n, spans)))
            break;
        /* The line is one whole record: as in Python, a stored hash decides first. */
        int64_t digest = blake2b_record(self->hash_start, start, (size_t)n);
        if (self->stored->count && hashes_discard(self->stored, digest)) {
            if (put_int64(&self->matched, digest) < 0 ||
                put_int64(&self->matched_at, line + 1) < 0)
                goto done;
            read++;
            pos = next;
            line++;
            continue;
        }
        if (!quoted && !split_record(self, start, n, spans)) break;
        if (buffer_reserve(b, n + self->prefix_size + 2 * self->norder + 32) < 0) goto done;
        Py_ssize_t before = b->size;
        if (!record_out(self, start, spans, b)) break;
        int64_t seen = record_key_line(self, start, spans, line + 1);
        if (seen < 0) goto done;
        if (seen) {
            b->size = before; /* a duplicate: Python rejects it */
            break;
        }
        if (PyDict_GET_SIZE(self->raws) < self->keep) {
            PyObject *at = PyLong_FromSsize_t(line + 1);
            PyObject *raw = at ? PyUnicode_DecodeUTF8((const char *)start, n, NULL) : NULL;
            if (raw == NULL || PyDict_SetItem(self->raws, at, raw) < 0) {
                Py_XDECREF(raw);
                Py_XDECREF(at);
                goto done;
            }
            Py_DECREF(raw);
            Py_DECREF(at);
        }
        b->size += snprintf(b->data + b->size, 32, "\t%lld\n", (long long)digest);
        read++;
        written++;
        pos = next;
        line++;
    }
    result = Py_BuildValue("nnnny#y#y#", pos, line, read, written, b->data ? b->data : "",
                           b->size, self->matched.data ? self->matched.data : "",
                           self->matched.size,
                           self->matched_at.data ? self->matched_at.data : "",
                           self->matched_at.size);
done:
    PyBuffer_Release(&view);
    if (b->capacity > (1 << 24)) { /* do not keep more than 16 MiB between calls */
        PyMem_Free(b->data);
        b->data = NULL;
        b->size = b->capacity = 0;
    }
    return result;
}

PyDoc_STRVAR(hash_doc, "record_hash(data) -> int\n\nThe keyed hash of one record's bytes.");

static PyObject *Scanner_record_hash(Scanner *self, PyObject *arg) {
    Py_buffer view;
    if (self->stored == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Scanner.__init__ was not called");
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    if (view.len == 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "a record is never empty");
        return NULL;
    }
    int64_t digest = blake2b_record(self->hash_start, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromLongLong(digest);
}

static PyMethodDef Scanner_methods[] = {
    {"scan", (PyCFunction)Scanner_scan, METH_VARARGS, scan_doc},
    {"record_hash", (PyCFunction)Scanner_record_hash, METH_O, hash_doc},
    {NULL, NULL, 0, NULL}};

PyDoc_STRVAR(Scanner_doc,
"Scanner(fields, order, key, prefix, salt, stored, keys, raws, keep)\n\n"
"``fields``: per header field, (kind, size, optional) with kind one of text, integer,\n"
"decimal (size: places), code (size: letters), date, timestamp. ``order``: the header\n"
"positions written, in order; ``key``: those of the key. ``prefix``: bytes written\n"
"before each line. ``salt``: the hash key. ``stored`` (Hashes), ``keys`` (KeyLines) and\n"
"``raws`` (line to text, up to ``keep`` of them) are the Python loop's state.");

static PyTypeObject ScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "loader._fastcsv.Scanner",
    .tp_basicsize = sizeof(Scanner),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = Scanner_doc,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Scanner_init,
    .tp_dealloc = (destructor)Scanner_dealloc,
    .tp_methods = Scanner_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "loader._fastcsv",
    "The compiled path for plain CSV records (see loader.processors.csv_copy).", -1, NULL,
    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fastcsv(void) {
    if (PyType_Ready(&ScannerType) < 0 || PyType_Ready(&HashesType) < 0 ||
        PyType_Ready(&HashesIterType) < 0 || PyType_Ready(&KeyLinesType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&ScannerType);
    if (PyModule_AddObject(m, "Scanner", (PyObject *)&ScannerType) < 0) {
        Py_DECREF(&ScannerType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "MAX_FIELDS", MAX_FIELDS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&HashesType);
    if (PyModule_AddObject(m, "Hashes", (PyObject *)&HashesType) < 0) {
        Py_DECREF(&HashesType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&KeyLinesType);
    if (PyModule_AddObject(m, "KeyLines", (PyObject *)&KeyLinesType) < 0) {
        Py_DECREF(&KeyLinesType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
