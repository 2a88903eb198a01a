/*
 * ingest._kafka_records: the records section of one Kafka v2 record batch, parsed natively.
 *
 * kafka-python decodes each record in pure Python (~10 us a record), which bounds the ingest
 * service below its target; this module parses a whole (already decompressed) records section
 * in one call and leaves everything at the batch level (CRC, decompression, transactions,
 * control batches) to kafka-python. ingest/native_records.py hooks it into the consumer.
 *
 * Record layout (Kafka protocol, DefaultRecord):
 *   length varint, attributes int8, timestampDelta varlong, offsetDelta varint,
 *   keyLength varint + key, valueLength varint + value,
 *   headerCount varint + headerCount * (headerKeyLength varint + key, headerValueLength varint + value)
 * Varints are zigzag-encoded base-128: a varint holds 32 bits (at most 5 bytes), a varlong 64
 * bits (at most 10 bytes). A negative key, value or header value length means null, as in the
 * Java client and kafka-python. Every read is bounds-checked; malformed input raises ValueError.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdarg.h>
#include <stdint.h>

#define VARINT_BYTES_MAX 5
#define VARINT_BITS 32
#define VARLONG_BYTES_MAX 10
#define VARLONG_BITS 64
/* A header is at least two one-byte varints (key length, value length). */
#define HEADER_BYTES_MIN 2

static PyTypeObject RecordType;

static PyStructSequence_Field record_fields[] = {
    {"offset", "the record's offset in its partition"},
    {"value", "the record's value: bytes, or None for a null value (a tombstone)"},
    {NULL, NULL},
};

static PyStructSequence_Desc record_desc = {
    "ingest._kafka_records.Record",
    "One consumed Kafka record: (offset, value).",
    record_fields,
    2,
};

/* Where the parser is, so that an error can say what was wrong and where. */
typedef struct {
    const uint8_t *data;
    Py_ssize_t pos;   /* next byte to read, counted from the start of the records section */
    Py_ssize_t end;   /* reads stop here: the end of the current record, or of the section */
    Py_ssize_t index; /* the record being read */
    Py_ssize_t count; /* records the batch header announces */
} Reader;

static int
fail_at(const Reader *r, Py_ssize_t pos, const char *format, ...)
{
    char what[200];
    va_list args;
    va_start(args, format);
    PyOS_vsnprintf(what, sizeof what, format, args);
    va_end(args);
    PyErr_Format(PyExc_ValueError, "record %zd of %zd (byte %zd of the records section): %s", r->index, r->count,
                 pos, what);
    return -1;
}

/* A zigzag varint of at most `bytes_max` bytes whose unsigned form fits in `bits` bits. */
static int
read_zigzag(Reader *r, int bytes_max, int bits, const char *field, int64_t *out)
{
    const Py_ssize_t start = r->pos;
    uint64_t raw = 0;
    for (int i = 0; i < bytes_max; i++) {
        if (r->pos >= r->end) {
            return fail_at(r, start, "truncated %s varint (the input ends after %d of its bytes)", field, i);
        }
        const uint8_t byte = r->data[r->pos];
        const int shift = 7 * i;
        if (i == bytes_max - 1 && ((byte & 0x80) || (bits - shift < 7 && (byte >> (bits - shift)) != 0))) {
            return fail_at(r, start, "overlong %s varint (more than %d bytes or %d bits)", field, bytes_max, bits);
        }
        raw |= (uint64_t)(byte & 0x7f) << shift;
        r->pos++;
        if (!(byte & 0x80)) {
            *out = (int64_t)(raw >> 1) ^ -(int64_t)(raw & 1);
            return 0;
        }
    }
    /* Not reached: the last allowed byte either ends the varint or fails above. */
    return fail_at(r, start, "overlong %s varint", field);
}

static int
read_varint(Reader *r, const char *field, int64_t *out)
{
    return read_zigzag(r, VARINT_BYTES_MAX, VARINT_BITS, field, out);
}

/* Skip a field of `length` bytes; a negative length is a null field and skips nothing. */
static int
skip_field(Reader *r, int64_t length, const char *field)
{
    if (length < 0) {
        return 0;
    }
    if (length > r->end - r->pos) {
        return fail_at(r, r->pos, "%s of %lld bytes overruns the record (%zd bytes left)", field, (long long)length,
                       r->end - r->pos);
    }
    r->pos += (Py_ssize_t)length;
    return 0;
}

/* Parse the record at r->pos; on success r->pos is past it and the out parameters are set. */
static int
read_record(Reader *r, Py_ssize_t section_end, long long base_offset, int64_t *offset, int64_t *length,
            Py_ssize_t *value_start, int64_t *value_length)
{
    int64_t ignored, delta, key_length, header_count, header_key_length, header_value_length;

    r->end = section_end;
    const Py_ssize_t length_at = r->pos;
    if (read_varint(r, "record length", length) < 0) {
        return -1;
    }
    if (*length <= 0 || *length > section_end - r->pos) {
        return fail_at(r, length_at, "record length %lld is not within 1..%zd (the bytes left in the section)",
                       (long long)*length, section_end - r->pos);
    }
    const Py_ssize_t body_start = r->pos;
    r->end = r->pos + (Py_ssize_t)*length;

    r->pos++; /* attributes (int8): no record-level attribute is defined yet */
    if (read_zigzag(r, VARLONG_BYTES_MAX, VARLONG_BITS, "timestamp delta", &ignored) < 0) {
        return -1;
    }
    const Py_ssize_t delta_at = r->pos;
    if (read_varint(r, "offset delta", &delta) < 0) {
        return -1;
    }
    if ((delta > 0 && base_offset > INT64_MAX - delta) || (delta < 0 && base_offset < INT64_MIN - delta)) {
        return fail_at(r, delta_at, "base offset %lld + offset delta %lld overflows 64 bits", base_offset,
                       (long long)delta);
    }
    *offset = base_offset + delta;
    if (read_varint(r, "key length", &key_length) < 0 || skip_field(r, key_length, "key") < 0) {
        return -1;
    }
    if (read_varint(r, "value length", value_length) < 0) {
        return -1;
    }
    *value_start = r->pos;
    if (skip_field(r, *value_length, "value") < 0) {
        return -1;
    }
    const Py_ssize_t count_at = r->pos;
    if (read_varint(r, "header count", &header_count) < 0) {
        return -1;
    }
    if (header_count < 0 || header_count > (r->end - r->pos) / HEADER_BYTES_MIN) {
        return fail_at(r, count_at, "header count %lld is not within 0..%zd (what the record's %zd bytes left can hold)",
                       (long long)header_count, (r->end - r->pos) / HEADER_BYTES_MIN, r->end - r->pos);
    }
    for (int64_t h = 0; h < header_count; h++) {
        const Py_ssize_t key_at = r->pos;
        if (read_varint(r, "header key length", &header_key_length) < 0) {
            return -1;
        }
        if (header_key_length < 0) {
            return fail_at(r, key_at, "header %lld has a negative key length %lld (a header key is never null)",
                           (long long)h, (long long)header_key_length);
        }
        if (skip_field(r, header_key_length, "header key") < 0 ||
            read_varint(r, "header value length", &header_value_length) < 0 ||
            skip_field(r, header_value_length, "header value") < 0) {
            return -1;
        }
    }
    if (r->pos != r->end) {
        return fail_at(r, body_start, "record length says %lld bytes but its fields take %zd", (long long)*length,
                       r->pos - body_start);
    }
    return 0;
}

static PyObject *
new_record(int64_t offset, PyObject *value)
{
    PyObject *record = PyStructSequence_New(&RecordType);
    PyObject *number = PyLong_FromLongLong(offset);
    if (record == NULL || number == NULL) {
        Py_XDECREF(record);
        Py_XDECREF(number);
        Py_DECREF(value);
        return NULL;
    }
    PyStructSequence_SET_ITEM(record, 0, number);
    PyStructSequence_SET_ITEM(record, 1, value);
    return record;
}

PyDoc_STRVAR(decode_records_doc,
"decode_records(section, count, base_offset, min_offset, /) -> (records, body_bytes, last_offset)\n\n"
"Parse the records section of one decompressed v2 record batch: `count` records whose offsets\n"
"are `base_offset` plus their offset delta. Leading records below `min_offset` are parsed but\n"
"left out (kafka-python's skip below the fetch offset); once one record is kept, all later ones\n"
"are. Returns the kept records as Record(offset, value), the sum of every record's length field\n"
"and the offset of the last record parsed (-1 when `count` is 0). Keys and headers are checked\n"
"and skipped. Raises ValueError naming the record and byte on any malformed or truncated input.");

static PyObject *
decode_records(PyObject *module, PyObject *args)
{
    Py_buffer buffer;
    Py_ssize_t count;
    long long base_offset, min_offset;
    if (!PyArg_ParseTuple(args, "y*nLL:decode_records", &buffer, &count, &base_offset, &min_offset)) {
        return NULL;
    }
    Reader r = {(const uint8_t *)buffer.buf, 0, buffer.len, 0, count};
    PyObject *kept = NULL;
    int64_t body_bytes = 0, last_offset = -1;
    int skipping = 1;

    if (count < 0) {
        fail_at(&r, 0, "the batch announces a negative record count %zd", count);
        goto error;
    }
    kept = PyList_New(0);
    if (kept == NULL) {
        goto error;
    }
    for (r.index = 0; r.index < count; r.index++) {
        int64_t offset = 0, length = 0, value_length = -1;
        Py_ssize_t value_start = 0;
        if (read_record(&r, buffer.len, base_offset, &offset, &length, &value_start, &value_length) < 0) {
            goto error;
        }
        body_bytes += length;
        last_offset = offset;
        if (skipping && offset < min_offset) {
            continue;
        }
        skipping = 0;
        PyObject *value;
        if (value_length < 0) {
            value = Py_NewRef(Py_None);
        } else {
            value = PyBytes_FromStringAndSize((const char *)r.data + value_start, (Py_ssize_t)value_length);
            if (value == NULL) {
                goto error;
            }
        }
        PyObject *record = new_record(offset, value);
        if (record == NULL) {
            goto error;
        }
        int appended = PyList_Append(kept, record);
        Py_DECREF(record);
        if (appended < 0) {
            goto error;
        }
    }
    if (r.pos != buffer.len) {
        PyErr_Format(PyExc_ValueError, "%zd unconsumed bytes after the last of %zd records (at byte %zd of the "
                     "records section)", buffer.len - r.pos, count, r.pos);
        goto error;
    }
    PyBuffer_Release(&buffer);
    return Py_BuildValue("(NLL)", kept, (long long)body_bytes, (long long)last_offset);

error:
    Py_XDECREF(kept);
    PyBuffer_Release(&buffer);
    return NULL;
}

static PyMethodDef module_methods[] = {
    {"decode_records", decode_records, METH_VARARGS, decode_records_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "ingest._kafka_records",
    "Native parsing of Kafka v2 record batches' records sections (see ingest/native_records.py).",
    -1,
    module_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__kafka_records(void)
{
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    if (RecordType.tp_name == NULL && PyStructSequence_InitType2(&RecordType, &record_desc) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "Record", (PyObject *)&RecordType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
