/*
 * Native fast path of the batch decoder: CloudEvents JSON messages straight into Arrow buffers.
 *
 * The decoder is built from a plan that `schemas/native_plan.py` derives from the pydantic
 * models, so this file holds no schema of its own: field names, kinds, length, value and time
 * bounds, literal values and character-class patterns (as byte tables) all come from the plan.
 *
 * It only ever says "certainly valid" or "not sure". A message is accepted here only when it is
 * strict JSON whose every key is known (and written without escapes), every required field
 * present, no key repeated, every value of the exact kind and within its bounds, strings valid
 * UTF-8 (escapes decoded; a lone UTF-16 surrogate is left to Python), and times
 * in the plain RFC 3339 form `YYYY-MM-DDTHH:MM:SS[.ffffff](Z|+HH:MM|-HH:MM)`. Anything else --
 * invalid, unusual or merely written differently -- is returned as deferred, and the Python
 * decoder (msgspec, then pydantic, the authority) decides it. Patterns the plan could not
 * compile to byte tables are checked by the Python side on whole Arrow columns.
 *
 * Parsing runs without the GIL on a tuple of the batch's bytes objects.
 *
 * `repeated_keys` is a separate scan for the Python side: it tells which messages certainly repeat
 * no key in any JSON object, so that only the others are parsed again in Python (decoder.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* K_ABSENT: an optional field the native path takes only when it is absent (its column is then all null). */
enum { K_STR = 1, K_INT = 2, K_LITERAL = 3, K_TIME = 4, K_TAG = 5, K_DATA = 6, K_ABSENT = 7 };
enum { COLUMN_STRING = 1, COLUMN_INT64 = 2 };

#define FIELDS_MAX 32
#define TYPES_MAX 32
#define LITERALS_MAX 16
#define COLUMNS_MAX (2 * FIELDS_MAX)
#define DEPTH_MAX 64
#define STRING_DATA_MAX ((size_t)INT32_MAX)

typedef struct {
    const char *name;
    Py_ssize_t name_len;
    int kind;
    int64_t lo, hi;
    int n_literals;
    const char *literals[LITERALS_MAX];
    Py_ssize_t literal_lens[LITERALS_MAX];
    int column; /* -1: not stored */
    int required;
    /* A character-class pattern compiled by native_plan.py: an optional first character, then
     * at least `rest_min` more. Tables are indexed by byte; every byte of a multi-byte UTF-8
     * character is >= 0x80 and allowed only where the class admits every non-ASCII character. */
    int has_pattern, has_first, rest_min;
    const char *first_table, *rest_table;
} Field;

typedef struct {
    const char *tag;
    Py_ssize_t tag_len;
    int n_fields;
    Field fields[FIELDS_MAX];
} TypeSpec;

typedef struct Decoder {
    PyObject_HEAD
    PyObject *keep;              /* the plan's bytes objects that the pointers below point into */
    Py_ssize_t message_bytes_max;
    int n_envelope;
    Field envelope[FIELDS_MAX];
    int tag_index, data_index;   /* in envelope */
    int n_types;
    TypeSpec types[TYPES_MAX];
    int n_columns[TYPES_MAX];    /* per type: envelope columns + its data columns */
    int column_kind[TYPES_MAX][COLUMNS_MAX];
} Decoder;

/* ---- growable buffers ------------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t len, cap;
} Buf;

static int buf_reserve(Buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return 1;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return 0;
    b->p = p;
    b->cap = cap;
    return 1;
}

static int buf_append(Buf *b, const void *data, size_t len) {
    if (!buf_reserve(b, len)) return 0;
    memcpy(b->p + b->len, data, len);
    b->len += len;
    return 1;
}

/* ---- strict JSON scanning ---------------------------------------------------------------- */

static inline const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    return p;
}

/* The length of the valid UTF-8 sequence at `p` (1 to 4), or 0: strict, so no overlong forms,
 * no UTF-16 surrogates, nothing past U+10FFFF. */
static inline int utf8_sequence(const char *p, const char *end) {
    unsigned char c = (unsigned char)*p;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return end - p >= 2 && ((unsigned char)p[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (end - p < 3) return 0;
        unsigned char c1 = (unsigned char)p[1], c2 = (unsigned char)p[2];
        if ((c1 & 0xC0) != 0x80 || (c2 & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && c1 < 0xA0) return 0;  /* overlong */
        if (c == 0xED && c1 >= 0xA0) return 0; /* UTF-16 surrogate */
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (end - p < 4) return 0;
        unsigned char c1 = (unsigned char)p[1], c2 = (unsigned char)p[2], c3 = (unsigned char)p[3];
        if ((c1 & 0xC0) != 0x80 || (c2 & 0xC0) != 0x80 || (c3 & 0xC0) != 0x80) return 0;
        if (c == 0xF0 && c1 < 0x90) return 0; /* overlong */
        if (c == 0xF4 && c1 >= 0x90) return 0; /* past U+10FFFF */
        return 4;
    }
    return 0;
}

static int hex4(const char *p, const char *end, uint32_t *value) {
    if (end - p < 4) return 0;
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (digit < 0) return 0;
        v = v * 16 + (uint32_t)digit;
    }
    *value = v;
    return 1;
}

static char *put_utf8(char *w, uint32_t cp) {
    if (cp < 0x80) {
        *w++ = (char)cp;
    } else if (cp < 0x800) {
        *w++ = (char)(0xC0 | (cp >> 6));
        *w++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *w++ = (char)(0xE0 | (cp >> 12));
        *w++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *w++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *w++ = (char)(0xF0 | (cp >> 18));
        *w++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *w++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *w++ = (char)(0x80 | (cp & 0x3F));
    }
    return w;
}

/* The rest of a string from its first escape at `p` on. With a `scratch` cursor the decoded
 * string is written there (never longer than its JSON text) and `*start`/`*len` point at it;
 * without one the escapes are only checked (keys, skipped values). A lone UTF-16 surrogate
 * (`\ud800` unpaired) is left to the Python path. */
static const char *scan_escaped(const char *p, const char *end, const char **start, Py_ssize_t *len, int64_t *chars,
                                int64_t count, char **scratch) {
    char *w = NULL;
    if (scratch) {
        w = *scratch;
        memcpy(w, *start, (size_t)(p - *start));
        w += p - *start;
    }
    while (p < end) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') {
            if (scratch) {
                *start = *scratch;
                *len = w - *scratch;
                *scratch = w;
            } else {
                *len = p - *start;
            }
            *chars = count;
            return p + 1;
        }
        if (c < 0x20) return NULL;
        if (c == '\\') {
            if (end - p < 2) return NULL;
            char decoded;
            switch (p[1]) {
            case '"': decoded = '"'; break;
            case '\\': decoded = '\\'; break;
            case '/': decoded = '/'; break;
            case 'b': decoded = '\b'; break;
            case 'f': decoded = '\f'; break;
            case 'n': decoded = '\n'; break;
            case 'r': decoded = '\r'; break;
            case 't': decoded = '\t'; break;
            case 'u': {
                uint32_t cp, low;
                if (!hex4(p + 2, end, &cp)) return NULL;
                p += 6;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || !hex4(p + 2, end, &low) || low < 0xDC00 ||
                        low > 0xDFFF)
                        return NULL;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                    p += 6;
                } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    return NULL;
                }
                if (w) w = put_utf8(w, cp);
                count++;
                continue;
            }
            default:
                return NULL;
            }
            if (w) *w++ = decoded;
            p += 2;
            count++;
            continue;
        }
        int n = utf8_sequence(p, end);
        if (!n) return NULL;
        if (w) {
            memcpy(w, p, (size_t)n);
            w += n;
        }
        p += n;
        count++;
    }
    return NULL;
}

/* A JSON string, starting at the opening quote: validates UTF-8 strictly and counts code points.
 * Returns the pointer after the closing quote, or NULL when the string is invalid. A string
 * with escapes is decoded into `scratch` when given (see scan_escaped). */
static const char *scan_string(const char *p, const char *end, const char **start, Py_ssize_t *len,
                               int64_t *chars, char **scratch) {
    if (p >= end || *p != '"') return NULL;
    p++;
    *start = p;
    int64_t count = 0;
    while (p < end) {
        /* Eight plain ASCII bytes at a time: none a quote, backslash, control byte or non-ASCII. */
        while (end - p >= 8) {
            uint64_t v;
            memcpy(&v, p, 8);
            const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
            uint64_t quote = v ^ (ones * '"'), backslash = v ^ (ones * '\\');
            uint64_t special = ((quote - ones) & ~quote) | ((backslash - ones) & ~backslash) | ((v - ones * 0x20) & ~v) | v;
            if (special & highs) break;
            p += 8;
            count += 8;
        }
        if (p >= end) break;
        unsigned char c = (unsigned char)*p;
        if (c == '"') {
            *len = p - *start;
            *chars = count;
            return p + 1;
        }
        if (c == '\\') return scan_escaped(p, end, start, len, chars, count, scratch);
        if (c < 0x20) return NULL;
        int n = utf8_sequence(p, end);
        if (!n) return NULL;
        p += n;
        count++;
    }
    return NULL;
}

static inline int is_digit(const char *p, const char *end) { return p < end && *p >= '0' && *p <= '9'; }

/* A JSON number, by the grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static const char *skip_number(const char *p, const char *end) {
    if (p < end && *p == '-') p++;
    if (!is_digit(p, end)) return NULL;
    if (*p == '0') {
        p++;
    } else {
        while (is_digit(p, end)) p++;
    }
    if (p < end && *p == '.') {
        p++;
        if (!is_digit(p, end)) return NULL;
        while (is_digit(p, end)) p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (!is_digit(p, end)) return NULL;
        while (is_digit(p, end)) p++;
    }
    return p;
}

/* Skips any JSON value (for the `data` object, read once the event type is known). */
static const char *skip_value(const char *p, const char *end, int depth) {
    const char *s;
    Py_ssize_t n;
    int64_t chars;
    if (depth > DEPTH_MAX) return NULL;
    p = skip_ws(p, end);
    if (p >= end) return NULL;
    switch (*p) {
    case '"':
        return scan_string(p, end, &s, &n, &chars, NULL);
    case '{':
        p = skip_ws(p + 1, end);
        if (p < end && *p == '}') return p + 1;
        for (;;) {
            p = scan_string(skip_ws(p, end), end, &s, &n, &chars, NULL);
            if (!p) return NULL;
            p = skip_ws(p, end);
            if (p >= end || *p != ':') return NULL;
            p = skip_value(p + 1, end, depth + 1);
            if (!p) return NULL;
            p = skip_ws(p, end);
            if (p >= end) return NULL;
            if (*p == '}') return p + 1;
            if (*p != ',') return NULL;
            p++;
        }
    case '[':
        p = skip_ws(p + 1, end);
        if (p < end && *p == ']') return p + 1;
        for (;;) {
            p = skip_value(p, end, depth + 1);
            if (!p) return NULL;
            p = skip_ws(p, end);
            if (p >= end) return NULL;
            if (*p == ']') return p + 1;
            if (*p != ',') return NULL;
            p++;
        }
    case 't':
        return end - p >= 4 && memcmp(p, "true", 4) == 0 ? p + 4 : NULL;
    case 'f':
        return end - p >= 5 && memcmp(p, "false", 5) == 0 ? p + 5 : NULL;
    case 'n':
        return end - p >= 4 && memcmp(p, "null", 4) == 0 ? p + 4 : NULL;
    default:
        return skip_number(p, end);
    }
}

/* ---- repeated keys ---------------------------------------------------------------------- */

/* Keys remembered per object: no object of the contract has nearly this many fields. */
#define KEYS_MAX 64
enum { KEYS_UNIQUE = 0, KEYS_REPEATED = 1, KEYS_UNSURE = 2 };

/* Skips one JSON value, as skip_value, and notes in `*status` an object in it that repeats a key
 * (KEYS_REPEATED, and the scan stops: NULL) or a key it cannot compare byte for byte (one written
 * with escapes, or an object past KEYS_MAX keys: KEYS_UNSURE, for the Python side to decide). */
static const char *scan_keys(const char *p, const char *end, int depth, int *status) {
    const char *s;
    Py_ssize_t n;
    int64_t chars;
    if (depth > DEPTH_MAX) return NULL;
    p = skip_ws(p, end);
    if (p >= end) return NULL;
    if (*p == '[') {
        p = skip_ws(p + 1, end);
        if (p < end && *p == ']') return p + 1;
        for (;;) {
            p = scan_keys(p, end, depth + 1, status);
            if (!p) return NULL;
            p = skip_ws(p, end);
            if (p >= end) return NULL;
            if (*p == ']') return p + 1;
            if (*p != ',') return NULL;
            p++;
        }
    }
    if (*p != '{') return skip_value(p, end, depth);
    const char *keys[KEYS_MAX];
    Py_ssize_t key_lens[KEYS_MAX];
    int count = 0;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') return p + 1;
    for (;;) {
        p = scan_string(skip_ws(p, end), end, &s, &n, &chars, NULL);
        if (!p) return NULL;
        if (memchr(s, '\\', (size_t)n) || count == KEYS_MAX) {
            *status = KEYS_UNSURE;
        } else {
            for (int i = 0; i < count; i++)
                if (key_lens[i] == n && memcmp(keys[i], s, (size_t)n) == 0) {
                    *status = KEYS_REPEATED;
                    return NULL;
                }
            keys[count] = s;
            key_lens[count++] = n;
        }
        p = skip_ws(p, end);
        if (p >= end || *p != ':') return NULL;
        p = scan_keys(p + 1, end, depth + 1, status);
        if (!p) return NULL;
        p = skip_ws(p, end);
        if (p >= end) return NULL;
        if (*p == '}') return p + 1;
        if (*p != ',') return NULL;
        p++;
    }
}

/* KEYS_UNIQUE when the message is strict JSON in which no object repeats a key, KEYS_REPEATED when
 * one does, KEYS_UNSURE otherwise (not JSON, too deep, escaped keys, very many keys). */
static int8_t repeated_keys_status(const char *p, Py_ssize_t n) {
    const char *end = p + n;
    int status = KEYS_UNIQUE;
    const char *after = scan_keys(p, end, 1, &status);
    if (status == KEYS_REPEATED) return KEYS_REPEATED;
    if (!after || skip_ws(after, end) != end) return KEYS_UNSURE;
    return (int8_t)status;
}

static PyObject *repeated_keys(PyObject *module, PyObject *values) {
    (void)module;
    PyObject *items = PySequence_Tuple(values);
    if (!items) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    PyObject *result = PyBytes_FromStringAndSize(NULL, n);
    const char **pointers = PyMem_RawMalloc(sizeof(char *) * (size_t)(n ? n : 1));
    Py_ssize_t *lengths = PyMem_RawMalloc(sizeof(Py_ssize_t) * (size_t)(n ? n : 1));
    if (!result || !pointers || !lengths) {
        PyMem_RawFree(pointers);
        PyMem_RawFree(lengths);
        Py_XDECREF(result);
        Py_DECREF(items);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(items, i);
        pointers[i] = PyBytes_Check(item) ? PyBytes_AS_STRING(item) : NULL;
        lengths[i] = PyBytes_Check(item) ? PyBytes_GET_SIZE(item) : 0;
    }
    char *statuses = PyBytes_AS_STRING(result);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        statuses[i] = (char)(pointers[i] ? repeated_keys_status(pointers[i], lengths[i]) : KEYS_UNSURE);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(pointers);
    PyMem_RawFree(lengths);
    Py_DECREF(items);
    return result;
}

/* A JSON integer: -?(0|[1-9][0-9]*), not followed by a fraction or exponent, within int64. */
static const char *scan_int(const char *p, const char *end, int64_t *value) {
    int negative = 0;
    if (p < end && *p == '-') {
        negative = 1;
        p++;
    }
    if (p >= end || *p < '0' || *p > '9') return NULL;
    if (*p == '0' && p + 1 < end && p[1] >= '0' && p[1] <= '9') return NULL; /* leading zero */
    uint64_t magnitude = 0;
    int digits = 0;
    while (p < end && *p >= '0' && *p <= '9') {
        if (++digits > 18) return NULL; /* beyond what certainly fits: let Python decide */
        magnitude = magnitude * 10 + (uint64_t)(*p - '0');
        p++;
    }
    if (p < end && (*p == '.' || *p == 'e' || *p == 'E')) return NULL;
    *value = negative ? -(int64_t)magnitude : (int64_t)magnitude;
    return p;
}

/* ---- times ------------------------------------------------------------------------------- */

static inline int digits2(const char *p, int *out) {
    if (p[0] < '0' || p[0] > '9' || p[1] < '0' || p[1] > '9') return 0;
    *out = (p[0] - '0') * 10 + (p[1] - '0');
    return 1;
}

/* Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, int m, int d) {
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const int64_t yoe = y - era * 400;
    const int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int days_in_month(int y, int m) {
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)) return 29;
    return days[m - 1];
}

/* `YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|+HH:MM|-HH:MM)` to microseconds since the epoch, UTC. */
static int parse_time(const char *s, Py_ssize_t n, int64_t *micros) {
    int c1, c2, month, day, hour, minute, second;
    if (n < 20) return 0;
    if (!digits2(s, &c1) || !digits2(s + 2, &c2) || s[4] != '-' || !digits2(s + 5, &month) || s[7] != '-' ||
        !digits2(s + 8, &day) || s[10] != 'T' || !digits2(s + 11, &hour) || s[13] != ':' ||
        !digits2(s + 14, &minute) || s[16] != ':' || !digits2(s + 17, &second))
        return 0;
    int year = c1 * 100 + c2;
    if (year < 1 || month < 1 || month > 12 || day < 1 || day > days_in_month(year, month) || hour > 23 ||
        minute > 59 || second > 59)
        return 0;
    Py_ssize_t i = 19;
    int64_t fraction_us = 0;
    if (s[i] == '.') {
        int digits = 0;
        i++;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            if (++digits > 6) return 0;
            fraction_us = fraction_us * 10 + (s[i] - '0');
            i++;
        }
        if (digits == 0) return 0;
        for (int k = digits; k < 6; k++) fraction_us *= 10;
    }
    int64_t offset_s = 0;
    if (i + 1 == n && s[i] == 'Z') {
        i++;
    } else if (i + 6 == n && (s[i] == '+' || s[i] == '-') && s[i + 3] == ':') {
        int offset_hours, offset_minutes;
        if (!digits2(s + i + 1, &offset_hours) || !digits2(s + i + 4, &offset_minutes)) return 0;
        if (offset_hours > 23 || offset_minutes > 59) return 0;
        offset_s = (offset_hours * 3600 + offset_minutes * 60) * (s[i] == '-' ? -1 : 1);
        i += 6;
    } else {
        return 0;
    }
    int64_t seconds = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset_s;
    *micros = seconds * 1000000 + fraction_us;
    return 1;
}

/* ---- one object against a list of fields -------------------------------------------------- */

typedef struct {
    const char *p;
    Py_ssize_t len;
    int64_t value;
    int seen;
} Slot;

/* Looks for `key` from the field after the previous match on: producers send keys in one order. */
static const Field *find_field(const Field *fields, int n_fields, const char *key, Py_ssize_t key_len, int *index) {
    for (int k = 0; k < n_fields; k++) {
        int i = (*index + 1 + k) % n_fields;
        if (fields[i].name_len == key_len && memcmp(fields[i].name, key, (size_t)key_len) == 0) {
            *index = i;
            return &fields[i];
        }
    }
    return NULL;
}

static int utf8_length(unsigned char lead) { return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4; }

/* Whether a valid UTF-8 string matches the field's compiled pattern. */
static int matches_pattern(const Field *f, const char *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    if (f->has_first) {
        if (n == 0 || !f->first_table[(unsigned char)s[0]]) return 0;
        i = utf8_length((unsigned char)s[0]);
    }
    if (n - i < f->rest_min) return 0;
    for (; i < n; i++)
        if (!f->rest_table[(unsigned char)s[i]]) return 0;
    return 1;
}

/* The value of one field. Returns the pointer after it, or NULL to defer the message. */
static const char *read_field(const Field *f, const char *p, const char *end, Slot *slot, char **scratch) {
    const char *s;
    Py_ssize_t n;
    int64_t chars;
    switch (f->kind) {
    case K_STR:
        p = scan_string(p, end, &s, &n, &chars, scratch);
        if (!p || chars < f->lo || chars > f->hi) return NULL;
        if (f->has_pattern && !matches_pattern(f, s, n)) return NULL;
        slot->p = s;
        slot->len = n;
        return p;
    case K_LITERAL:
    case K_TAG:
        p = scan_string(p, end, &s, &n, &chars, scratch);
        if (!p) return NULL;
        if (f->kind == K_LITERAL) {
            int matched = 0;
            for (int i = 0; i < f->n_literals && !matched; i++)
                matched = f->literal_lens[i] == n && memcmp(f->literals[i], s, (size_t)n) == 0;
            if (!matched) return NULL;
        }
        slot->p = s;
        slot->len = n;
        return p;
    case K_TIME:
        p = scan_string(p, end, &s, &n, &chars, scratch);
        if (!p || !parse_time(s, n, &slot->value) || slot->value < f->lo || slot->value > f->hi) return NULL;
        return p;
    case K_INT:
        p = scan_int(p, end, &slot->value);
        if (!p || slot->value < f->lo || slot->value > f->hi) return NULL;
        return p;
    case K_DATA:
        if (p >= end || *p != '{') return NULL;
        s = p;
        p = skip_value(p, end, 1);
        if (!p) return NULL;
        slot->p = s;
        slot->len = p - s;
        return p;
    }
    return NULL;
}

/* While reading an envelope: once the type is known, `data` is read in the same pass. */
typedef struct Envelope {
    const struct Decoder *decoder;
    Slot *data_slots;
    char **scratch; /* where escaped strings are decoded to */
    int tag_index;  /* in the envelope's fields */
    int type_index; /* -1 until `data` has been read as that type */
} Envelope;

static const char *read_data(Envelope *envelope, const Slot *slots, const char *p, const char *end);

/* An object whose keys are all among `fields`, none repeated, every required one present. */
static int read_object(const Field *fields, int n_fields, const char *p, const char *end, Slot *slots,
                       const char **after, Envelope *envelope, char **scratch) {
    int index = -1;
    for (int i = 0; i < n_fields; i++) slots[i].seen = 0;
    p = skip_ws(p, end);
    if (p >= end || *p != '{') return 0;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') {
        p++;
    } else {
        for (;;) {
            const char *key;
            Py_ssize_t key_len;
            int64_t chars;
            p = scan_string(p, end, &key, &key_len, &chars, NULL);
            if (!p) return 0;
            const Field *f = find_field(fields, n_fields, key, key_len, &index);
            if (!f || slots[index].seen || f->kind == K_ABSENT) return 0;
            p = skip_ws(p, end);
            if (p >= end || *p != ':') return 0;
            p = skip_ws(p + 1, end);
            if (f->kind == K_DATA && envelope && slots[envelope->tag_index].seen)
                p = read_data(envelope, slots, p, end);
            else
                p = read_field(f, p, end, &slots[index], scratch);
            if (!p) return 0;
            slots[index].seen = 1;
            p = skip_ws(p, end);
            if (p >= end) return 0;
            if (*p == '}') {
                p++;
                break;
            }
            if (*p != ',') return 0;
            p = skip_ws(p + 1, end);
        }
    }
    for (int i = 0; i < n_fields; i++)
        if (fields[i].required && !slots[i].seen) return 0;
    *after = p;
    return 1;
}

/* ---- the batch ----------------------------------------------------------------------------- */

typedef struct {
    Buf index;                   /* int64 message indexes */
    Buf offsets[COLUMNS_MAX];    /* int32 offsets of string columns */
    Buf data[COLUMNS_MAX];       /* string bytes, or int64 values */
    int64_t count;
} TypeOut;

static void type_out_free(TypeOut *out, int n_columns) {
    free(out->index.p);
    for (int c = 0; c < n_columns; c++) {
        free(out->offsets[c].p);
        free(out->data[c].p);
    }
}

/* Appends one accepted message's values. Returns 0 when out of memory or past the string limit. */
static int commit(const Decoder *d, int t, TypeOut *out, int64_t message_index, const Slot *env_slots,
                  const Slot *data_slots) {
    const TypeSpec *spec = &d->types[t];
    const Slot *column_slots[COLUMNS_MAX];
    for (int i = 0; i < d->n_envelope; i++)
        if (d->envelope[i].column >= 0) column_slots[d->envelope[i].column] = &env_slots[i];
    for (int i = 0; i < spec->n_fields; i++)
        if (spec->fields[i].column >= 0) column_slots[spec->fields[i].column] = &data_slots[i];
    for (int c = 0; c < d->n_columns[t]; c++)
        if (d->column_kind[t][c] == COLUMN_STRING &&
            out->data[c].len + (size_t)column_slots[c]->len > STRING_DATA_MAX)
            return 0;
    if (!buf_append(&out->index, &message_index, sizeof message_index)) return 0;
    for (int c = 0; c < d->n_columns[t]; c++) {
        const Slot *slot = column_slots[c];
        if (d->column_kind[t][c] == COLUMN_STRING) {
            if (out->offsets[c].len == 0) {
                int32_t zero = 0;
                if (!buf_append(&out->offsets[c], &zero, sizeof zero)) return 0;
            }
            if (!buf_append(&out->data[c], slot->p, (size_t)slot->len)) return 0;
            int32_t offset = (int32_t)out->data[c].len;
            if (!buf_append(&out->offsets[c], &offset, sizeof offset)) return 0;
        } else {
            if (!buf_append(&out->data[c], &slot->value, sizeof slot->value)) return 0;
        }
    }
    out->count++;
    return 1;
}

/* Reads `data` at `p` as the type the tag names; returns the pointer after it, or NULL. */
static const char *read_data(Envelope *envelope, const Slot *slots, const char *p, const char *end) {
    const Decoder *d = envelope->decoder;
    const Slot *tag = &slots[envelope->tag_index];
    for (int t = 0; t < d->n_types; t++) {
        const TypeSpec *spec = &d->types[t];
        if (spec->tag_len != tag->len || memcmp(spec->tag, tag->p, (size_t)tag->len) != 0) continue;
        const char *after;
        if (!read_object(spec->fields, spec->n_fields, p, end, envelope->data_slots, &after, NULL, envelope->scratch))
            return NULL;
        envelope->type_index = t;
        return after;
    }
    return NULL; /* a type the native path does not handle */
}

/* Returns the accepting type's index, or -1 to defer the message. */
static int classify(const Decoder *d, const char *p, Py_ssize_t n, Slot *env_slots, Slot *data_slots,
                    char *scratch_buffer) {
    const char *end = p + n, *after;
    if (n > d->message_bytes_max) return -1;
    /* Decoded strings are never longer than their JSON text, so the message's size bounds them. */
    char *scratch = scratch_buffer;
    Envelope envelope = {d, data_slots, &scratch, d->tag_index, -1};
    if (!read_object(d->envelope, d->n_envelope, p, end, env_slots, &after, &envelope, &scratch)) return -1;
    if (skip_ws(after, end) != end) return -1;
    if (envelope.type_index >= 0) return envelope.type_index;
    /* `data` came before `type`: it was skipped, and is read now. */
    const Slot *data = &env_slots[d->data_index];
    after = read_data(&envelope, env_slots, data->p, data->p + data->len);
    return after == data->p + data->len ? envelope.type_index : -1;
}

static PyObject *Decoder_decode(Decoder *self, PyObject *values) {
    PyObject *items = PySequence_Tuple(values);
    if (!items) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    const char **pointers = PyMem_RawMalloc(sizeof(char *) * (size_t)(n ? n : 1));
    Py_ssize_t *lengths = PyMem_RawMalloc(sizeof(Py_ssize_t) * (size_t)(n ? n : 1));
    int8_t *accepted = PyMem_RawMalloc((size_t)(n ? n : 1));
    TypeOut *outs = PyMem_RawCalloc((size_t)self->n_types, sizeof(TypeOut));
    /* Every message is at most message_bytes_max, and so are its decoded strings together. */
    char *scratch = PyMem_RawMalloc((size_t)self->message_bytes_max + 1);
    if (!pointers || !lengths || !accepted || !outs || !scratch) {
        PyMem_RawFree(scratch);
        PyMem_RawFree(pointers);
        PyMem_RawFree(lengths);
        PyMem_RawFree(accepted);
        PyMem_RawFree(outs);
        Py_DECREF(items);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(items, i);
        if (PyBytes_Check(item)) {
            pointers[i] = PyBytes_AS_STRING(item);
            lengths[i] = PyBytes_GET_SIZE(item);
        } else {
            pointers[i] = NULL; /* not bytes: the Python path reports it */
            lengths[i] = 0;
        }
    }
    int out_of_memory = 0;
    Py_BEGIN_ALLOW_THREADS
    Slot env_slots[FIELDS_MAX], data_slots[FIELDS_MAX];
    for (Py_ssize_t i = 0; i < n; i++) {
        int t = pointers[i] ? classify(self, pointers[i], lengths[i], env_slots, data_slots, scratch) : -1;
        if (t >= 0 && !out_of_memory && !commit(self, t, &outs[t], (int64_t)i, env_slots, data_slots)) {
            out_of_memory = 1; /* or a column past 2 GiB: the rest goes to the Python path */
            t = -1;
        }
        accepted[i] = (int8_t)(out_of_memory && t >= 0 ? -1 : t);
    }
    Py_END_ALLOW_THREADS

    PyObject *deferred = NULL, *results = NULL;
    deferred = PyList_New(0);
    results = PyList_New(self->n_types);
    if (!deferred || !results) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (accepted[i] >= 0) continue;
        PyObject *index = PyLong_FromSsize_t(i);
        if (!index || PyList_Append(deferred, index) < 0) {
            Py_XDECREF(index);
            goto fail;
        }
        Py_DECREF(index);
    }
    for (int t = 0; t < self->n_types; t++) {
        TypeOut *out = &outs[t];
        if (out->count == 0) {
            Py_INCREF(Py_None);
            PyList_SET_ITEM(results, t, Py_None);
            continue;
        }
        PyObject *columns = PyList_New(self->n_columns[t]);
        if (!columns) goto fail;
        PyObject *entry = Py_BuildValue("(LNN)", (long long)out->count,
                                        PyBytes_FromStringAndSize(out->index.p, (Py_ssize_t)out->index.len), columns);
        if (!entry) goto fail;
        PyList_SET_ITEM(results, t, entry);
        for (int c = 0; c < self->n_columns[t]; c++) {
            PyObject *column;
            if (self->column_kind[t][c] == COLUMN_STRING)
                column = Py_BuildValue("(y#y#)", out->offsets[c].p, (Py_ssize_t)out->offsets[c].len,
                                       out->data[c].p ? out->data[c].p : "", (Py_ssize_t)out->data[c].len);
            else
                column = PyBytes_FromStringAndSize(out->data[c].p, (Py_ssize_t)out->data[c].len);
            if (!column) goto fail;
            PyList_SET_ITEM(columns, c, column);
        }
    }
    for (int t = 0; t < self->n_types; t++) type_out_free(&outs[t], self->n_columns[t]);
    PyMem_RawFree(scratch);
    PyMem_RawFree(pointers);
    PyMem_RawFree(lengths);
    PyMem_RawFree(accepted);
    PyMem_RawFree(outs);
    Py_DECREF(items);
    return Py_BuildValue("(NN)", results, deferred);

fail:
    for (int t = 0; t < self->n_types; t++) type_out_free(&outs[t], self->n_columns[t]);
    PyMem_RawFree(scratch);
    PyMem_RawFree(pointers);
    PyMem_RawFree(lengths);
    PyMem_RawFree(accepted);
    PyMem_RawFree(outs);
    Py_DECREF(items);
    Py_XDECREF(deferred);
    Py_XDECREF(results);
    return NULL;
}

/* ---- building a decoder from its plan -------------------------------------------------------- */

/* Keeps `bytes_object` alive in self->keep and returns its buffer. */
static int keep_bytes(Decoder *self, PyObject *bytes_object, const char **out, Py_ssize_t *len) {
    if (!PyBytes_Check(bytes_object)) {
        PyErr_SetString(PyExc_TypeError, "plan names and literals must be bytes");
        return 0;
    }
    if (PyList_Append(self->keep, bytes_object) < 0) return 0;
    *out = PyBytes_AS_STRING(bytes_object);
    *len = PyBytes_GET_SIZE(bytes_object);
    return 1;
}

/* A field from the plan's tuple (name, kind, lo, hi, literals, column, required, pattern), where
 * pattern is None or (first table or None, rest table, rest_min), each table 256 bytes. */
static int load_field(Decoder *self, PyObject *spec, Field *f) {
    PyObject *name, *literals, *pattern;
    long long lo, hi;
    if (!PyArg_ParseTuple(spec, "SiLLOiiO", &name, &f->kind, &lo, &hi, &literals, &f->column, &f->required,
                          &pattern))
        return 0;
    f->has_pattern = pattern != Py_None;
    if (f->has_pattern) {
        PyObject *first, *rest;
        Py_ssize_t first_len = 256, rest_len;
        if (f->kind != K_STR || !PyArg_ParseTuple(pattern, "OSi", &first, &rest, &f->rest_min)) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "only string fields have patterns");
            return 0;
        }
        f->has_first = first != Py_None;
        if (f->has_first && !keep_bytes(self, first, &f->first_table, &first_len)) return 0;
        if (!keep_bytes(self, rest, &f->rest_table, &rest_len)) return 0;
        if (first_len != 256 || rest_len != 256) {
            PyErr_SetString(PyExc_ValueError, "pattern tables must have 256 entries");
            return 0;
        }
    }
    f->lo = lo;
    f->hi = hi;
    if (!keep_bytes(self, name, &f->name, &f->name_len)) return 0;
    if (f->kind < K_STR || f->kind > K_ABSENT) {
        PyErr_Format(PyExc_ValueError, "unknown field kind %d", f->kind);
        return 0;
    }
    if (!PyTuple_Check(literals) || PyTuple_GET_SIZE(literals) > LITERALS_MAX) {
        PyErr_SetString(PyExc_ValueError, "literals must be a tuple of at most 16 bytes");
        return 0;
    }
    f->n_literals = (int)PyTuple_GET_SIZE(literals);
    for (int i = 0; i < f->n_literals; i++)
        if (!keep_bytes(self, PyTuple_GET_ITEM(literals, i), &f->literals[i], &f->literal_lens[i])) return 0;
    if (f->column >= COLUMNS_MAX) {
        PyErr_SetString(PyExc_ValueError, "too many columns");
        return 0;
    }
    return 1;
}

static int load_fields(Decoder *self, PyObject *specs, Field *fields, int *n_fields) {
    if (!PyTuple_Check(specs) || PyTuple_GET_SIZE(specs) > FIELDS_MAX) {
        PyErr_SetString(PyExc_ValueError, "fields must be a tuple of at most 32 field specs");
        return 0;
    }
    *n_fields = (int)PyTuple_GET_SIZE(specs);
    for (int i = 0; i < *n_fields; i++)
        if (!load_field(self, PyTuple_GET_ITEM(specs, i), &fields[i])) return 0;
    return 1;
}

static int column_kind_of(int field_kind) {
    return field_kind == K_INT || field_kind == K_TIME ? COLUMN_INT64 : COLUMN_STRING;
}

/* Decoder(message_bytes_max, envelope_fields, ((tag, data_fields), ...)) */
static int Decoder_init(Decoder *self, PyObject *args, PyObject *kwargs) {
    PyObject *envelope, *types;
    Py_ssize_t message_bytes_max;
    if (!PyArg_ParseTuple(args, "nOO", &message_bytes_max, &envelope, &types)) return -1;
    Py_XSETREF(self->keep, PyList_New(0));
    if (!self->keep) return -1;
    if (message_bytes_max < 0) {
        PyErr_SetString(PyExc_ValueError, "message_bytes_max must not be negative");
        return -1;
    }
    self->message_bytes_max = message_bytes_max;
    if (!load_fields(self, envelope, self->envelope, &self->n_envelope)) return -1;
    int tags = 0, datas = 0;
    for (int i = 0; i < self->n_envelope; i++) {
        tags += self->envelope[i].kind == K_TAG;
        datas += self->envelope[i].kind == K_DATA;
        if (self->envelope[i].kind == K_TAG) self->tag_index = i;
        if (self->envelope[i].kind == K_DATA) self->data_index = i;
        if ((self->envelope[i].kind == K_TAG || self->envelope[i].kind == K_DATA) && !self->envelope[i].required) {
            PyErr_SetString(PyExc_ValueError, "the type tag and data must be required");
            return -1;
        }
    }
    if (tags != 1 || datas != 1) {
        PyErr_SetString(PyExc_ValueError, "the envelope needs exactly one type tag and one data field");
        return -1;
    }
    if (!PyTuple_Check(types) || PyTuple_GET_SIZE(types) > TYPES_MAX) {
        PyErr_SetString(PyExc_ValueError, "types must be a tuple of at most 32 (tag, fields)");
        return -1;
    }
    self->n_types = (int)PyTuple_GET_SIZE(types);
    for (int t = 0; t < self->n_types; t++) {
        PyObject *tag, *fields;
        TypeSpec *spec = &self->types[t];
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(types, t), "SO", &tag, &fields)) return -1;
        if (!keep_bytes(self, tag, &spec->tag, &spec->tag_len)) return -1;
        if (!load_fields(self, fields, spec->fields, &spec->n_fields)) return -1;
        /* Columns must be numbered 0..k-1 without gaps across envelope and data fields. */
        int seen[COLUMNS_MAX] = {0}, n_columns = 0;
        for (int pass = 0; pass < 2; pass++) {
            const Field *group = pass ? spec->fields : self->envelope;
            int count = pass ? spec->n_fields : self->n_envelope;
            for (int i = 0; i < count; i++) {
                const Field *f = &group[i];
                if (f->column < 0) continue;
                if (seen[f->column] || f->kind == K_DATA || f->kind == K_TAG || !f->required) {
                    PyErr_SetString(PyExc_ValueError, "a column must be one required scalar field");
                    return -1;
                }
                seen[f->column] = 1;
                self->column_kind[t][f->column] = column_kind_of(f->kind);
                n_columns++;
            }
        }
        for (int c = 0; c < n_columns; c++)
            if (!seen[c]) {
                PyErr_SetString(PyExc_ValueError, "columns must be numbered without gaps");
                return -1;
            }
        self->n_columns[t] = n_columns;
        for (int i = 0; i < spec->n_fields; i++)
            if (spec->fields[i].kind == K_TAG || spec->fields[i].kind == K_DATA) {
                PyErr_SetString(PyExc_ValueError, "data fields must be scalars");
                return -1;
            }
    }
    return 0;
}

static void Decoder_dealloc(Decoder *self) {
    Py_XDECREF(self->keep);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Decoder_methods[] = {
    {"decode", (PyCFunction)Decoder_decode, METH_O,
     "decode(values) -> (results, deferred): per plan type None or (count, index int64 bytes, columns), "
     "where a string column is (int32 offsets bytes, data bytes) and an int64 column is bytes; "
     "deferred lists the indexes of the messages left to the Python decoder."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "schemas._fastjson.Decoder",
    .tp_basicsize = sizeof(Decoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Decoder(message_bytes_max, envelope_fields, types): a plan-driven CloudEvents fast path.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Decoder_init,
    .tp_dealloc = (destructor)Decoder_dealloc,
    .tp_methods = Decoder_methods,
};

static PyMethodDef module_methods[] = {
    {"repeated_keys", (PyCFunction)repeated_keys, METH_O,
     "repeated_keys(values) -> bytes: per value KEYS_UNIQUE (no JSON object in it repeats a key), "
     "KEYS_REPEATED (one does) or KEYS_UNSURE (not strict JSON, escaped keys, too deep or too many keys: "
     "the Python side decides); a value that is not bytes is KEYS_UNSURE."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_fastjson",
    .m_doc = "Native fast path of schemas.decoder (see schemas/native_plan.py).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__fastjson(void) {
    if (PyType_Ready(&DecoderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&DecoderType);
    if (PyModule_AddObject(m, "Decoder", (PyObject *)&DecoderType) < 0) {
        Py_DECREF(&DecoderType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "KIND_STR", K_STR);
    PyModule_AddIntConstant(m, "KIND_INT", K_INT);
    PyModule_AddIntConstant(m, "KIND_LITERAL", K_LITERAL);
    PyModule_AddIntConstant(m, "KIND_TIME", K_TIME);
    PyModule_AddIntConstant(m, "KIND_TAG", K_TAG);
    PyModule_AddIntConstant(m, "KIND_DATA", K_DATA);
    PyModule_AddIntConstant(m, "KIND_ABSENT", K_ABSENT);
    PyModule_AddIntConstant(m, "KEYS_UNIQUE", KEYS_UNIQUE);
    PyModule_AddIntConstant(m, "KEYS_REPEATED", KEYS_REPEATED);
    PyModule_AddIntConstant(m, "KEYS_UNSURE", KEYS_UNSURE);
    return m;
}
