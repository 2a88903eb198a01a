/*
 * Native build of the payer-receipt Merkle sum trees for settlement/reports/sum_tree.py (its docstring has the
 * encoding): the same roots as `sum_tree.root` over `sum_tree.leaf`, byte for byte, without a Python object per
 * leaf or node. SHA-256 is OpenSSL's (the library Python's hashlib calls; it uses the CPU's SHA extensions where
 * present). The GIL is released while hashing.
 *
 * group_roots(starts, source_offsets, source_data, id_offsets, id_data, fees) -> bytes
 *   The root hash (32 bytes each, in order) of every group of consecutive leaves: group g is leaves
 *   [starts[g], starts[g + 1]), each non-empty. Leaf i is (source i, event id i, fee i): the strings are UTF-8
 *   bytes data[offsets[i]:offsets[i + 1]] (Arrow's large-string layout), the fees signed 64-bit. Every buffer
 *   holds native int64 except the two data buffers.
 * root(hashes, fees) -> (hash, fee)
 *   The root over nodes given as their hashes (32 bytes each) and fee sums (native int64 each); the fee comes
 *   back as 16-byte big-endian two's complement (the encoding's). At least one node.
 * A malformed buffer raises ValueError; a fee sum beyond 128 bits OverflowError (the Python path's to_bytes does).
 */
#define PY_SSIZE_T_CLEAN
#define OPENSSL_API_COMPAT 0x10100000L
#include <Python.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <string.h>

#define HASH_BYTES 32
#define FEE_BYTES 16
#define LEAF_TAG 0x00
#define NODE_TAG 0x01

typedef __int128 fee_t;

/* OpenSSL 3's one-shot SHA256() fetches the algorithm by name on every call; the low-level calls do not. */
static void sha256(const uint8_t *message, size_t length, uint8_t *digest) {
    SHA256_CTX context;
    SHA256_Init(&context);
    SHA256_Update(&context, message, length);
    SHA256_Final(digest, &context);
}

typedef struct {
    uint8_t hash[HASH_BYTES];
    fee_t fee;
} sum_node;

static void fee_write(fee_t value, uint8_t *out) {
    unsigned __int128 bits = (unsigned __int128)value;
    for (int i = FEE_BYTES - 1; i >= 0; i--) {
        out[i] = (uint8_t)(bits & 0xff);
        bits >>= 8;
    }
}

static void length_write(uint32_t value, uint8_t *out) {
    out[0] = (uint8_t)(value >> 24);
    out[1] = (uint8_t)(value >> 16);
    out[2] = (uint8_t)(value >> 8);
    out[3] = (uint8_t)value;
}

/* Returns 0, or -1 where the two sums overflow 128 bits. */
static int node_of(const sum_node *left, const sum_node *right, sum_node *out) {
    uint8_t body[1 + 2 * (HASH_BYTES + FEE_BYTES)];
    fee_t sum;
    if (__builtin_add_overflow(left->fee, right->fee, &sum)) return -1;
    body[0] = NODE_TAG;
    memcpy(body + 1, left->hash, HASH_BYTES);
    fee_write(left->fee, body + 1 + HASH_BYTES);
    memcpy(body + 1 + HASH_BYTES + FEE_BYTES, right->hash, HASH_BYTES);
    fee_write(right->fee, body + 1 + 2 * HASH_BYTES + FEE_BYTES);
    sha256(body, sizeof body, out->hash);
    out->fee = sum;
    return 0;
}

/* Folds nodes[0..count) in place, level by level (a last node without a partner goes up unchanged); the root
   ends in nodes[0]. Returns 0, or -1 on a sum overflow. */
static int fold_levels(sum_node *nodes, size_t count) {
    while (count > 1) {
        size_t above = 0;
        for (size_t i = 0; i + 1 < count; i += 2) {
            sum_node parent;
            if (node_of(&nodes[i], &nodes[i + 1], &parent) < 0) return -1;
            nodes[above++] = parent;
        }
        if (count % 2) nodes[above++] = nodes[count - 1];
        count = above;
    }
    return 0;
}

/* The leaf hash of one event; `scratch` is grown as needed (returns -1 when out of memory). */
static int leaf_of(const uint8_t *source, uint32_t source_len, const uint8_t *id, uint32_t id_len, int64_t fee,
                   uint8_t **scratch, size_t *scratch_bytes, sum_node *out) {
    size_t need = 1 + 4 + (size_t)source_len + 4 + (size_t)id_len + FEE_BYTES;
    if (need > *scratch_bytes) {
        uint8_t *grown = PyMem_RawRealloc(*scratch, need);
        if (!grown) return -1;
        *scratch = grown;
        *scratch_bytes = need;
    }
    uint8_t *p = *scratch;
    *p++ = LEAF_TAG;
    length_write(source_len, p);
    memcpy(p + 4, source, source_len);
    p += 4 + source_len;
    length_write(id_len, p);
    memcpy(p + 4, id, id_len);
    p += 4 + id_len;
    out->fee = (fee_t)fee;
    fee_write(out->fee, p);
    sha256(*scratch, need, out->hash);
    return 0;
}

typedef struct {
    Py_buffer starts, source_offsets, source_data, id_offsets, id_data, fees;
} group_inputs;

static const char *check_inputs(const group_inputs *in, Py_ssize_t *groups, Py_ssize_t *leaves) {
    if (in->starts.len % 8 || in->source_offsets.len % 8 || in->id_offsets.len % 8 || in->fees.len % 8)
        return "starts, offsets and fees must be int64 buffers";
    *groups = in->starts.len / 8 - 1;
    *leaves = in->fees.len / 8;
    if (*groups < 0) return "starts needs at least one entry";
    if (in->source_offsets.len / 8 != *leaves + 1 || in->id_offsets.len / 8 != *leaves + 1)
        return "each offsets buffer needs one entry more than there are fees";
    const int64_t *starts = in->starts.buf;
    if (starts[0] != 0 || starts[*groups] != *leaves) return "starts must run from 0 to the number of leaves";
    for (Py_ssize_t g = 0; g < *groups; g++)
        if (starts[g + 1] <= starts[g]) return "every group needs at least one leaf (starts must increase)";
    const int64_t *so = in->source_offsets.buf, *io = in->id_offsets.buf;
    for (Py_ssize_t i = 0; i < *leaves; i++) {
        if (so[i + 1] < so[i] || io[i + 1] < io[i]) return "offsets must not decrease";
        if (so[i + 1] - so[i] > UINT32_MAX || io[i + 1] - io[i] > UINT32_MAX) return "a string is over 4 GiB";
    }
    if (*leaves && (so[0] < 0 || io[0] < 0 || so[*leaves] > in->source_data.len || io[*leaves] > in->id_data.len))
        return "offsets point outside their data";
    return NULL;
}

/* Returns 0, -1 out of memory, -2 sum overflow. */
static int hash_groups(const group_inputs *in, Py_ssize_t groups, uint8_t *roots) {
    const int64_t *starts = in->starts.buf, *so = in->source_offsets.buf, *io = in->id_offsets.buf;
    const int64_t *fees = in->fees.buf;
    const uint8_t *sd = in->source_data.buf, *id = in->id_data.buf;
    size_t widest = 0;
    for (Py_ssize_t g = 0; g < groups; g++)
        if ((size_t)(starts[g + 1] - starts[g]) > widest) widest = (size_t)(starts[g + 1] - starts[g]);
    sum_node *nodes = PyMem_RawMalloc((widest ? widest : 1) * sizeof(sum_node));
    uint8_t *scratch = NULL;
    size_t scratch_bytes = 0;
    int status = nodes ? 0 : -1;
    for (Py_ssize_t g = 0; g < groups && status == 0; g++) {
        int64_t first = starts[g];
        size_t count = (size_t)(starts[g + 1] - first);
        for (size_t k = 0; k < count && status == 0; k++) {
            int64_t i = first + (int64_t)k;
            status = leaf_of(sd + so[i], (uint32_t)(so[i + 1] - so[i]), id + io[i], (uint32_t)(io[i + 1] - io[i]),
                             fees[i], &scratch, &scratch_bytes, &nodes[k]);
        }
        if (status == 0 && fold_levels(nodes, count) < 0) status = -2;
        if (status == 0) memcpy(roots + (size_t)g * HASH_BYTES, nodes[0].hash, HASH_BYTES);
    }
    PyMem_RawFree(scratch);
    PyMem_RawFree(nodes);
    return status;
}

static PyObject *group_roots(PyObject *self, PyObject *args) {
    group_inputs in;
    memset(&in, 0, sizeof in);
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*", &in.starts, &in.source_offsets, &in.source_data, &in.id_offsets,
                          &in.id_data, &in.fees))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t groups, leaves;
    const char *problem = check_inputs(&in, &groups, &leaves);
    if (problem) {
        PyErr_SetString(PyExc_ValueError, problem);
    } else {
        result = PyBytes_FromStringAndSize(NULL, groups * HASH_BYTES);
        if (result) {
            int status;
            Py_BEGIN_ALLOW_THREADS
            status = hash_groups(&in, groups, (uint8_t *)PyBytes_AS_STRING(result));
            Py_END_ALLOW_THREADS
            if (status < 0) {
                Py_CLEAR(result);
                if (status == -1) PyErr_NoMemory();
                else PyErr_SetString(PyExc_OverflowError, "a group's fee sum is beyond 128 bits");
            }
        }
    }
    PyBuffer_Release(&in.starts);
    PyBuffer_Release(&in.source_offsets);
    PyBuffer_Release(&in.source_data);
    PyBuffer_Release(&in.id_offsets);
    PyBuffer_Release(&in.id_data);
    PyBuffer_Release(&in.fees);
    return result;
}

static PyObject *root(PyObject *self, PyObject *args) {
    Py_buffer hashes, fees;
    if (!PyArg_ParseTuple(args, "y*y*", &hashes, &fees)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t count = hashes.len / HASH_BYTES;
    if (hashes.len % HASH_BYTES || fees.len != count * (Py_ssize_t)sizeof(int64_t) || count == 0) {
        PyErr_SetString(PyExc_ValueError, "root needs n > 0 hashes of 32 bytes and n int64 fees");
    } else {
        sum_node *nodes = PyMem_RawMalloc((size_t)count * sizeof(sum_node));
        if (!nodes) {
            PyErr_NoMemory();
        } else {
            const uint8_t *h = hashes.buf;
            const int64_t *f = fees.buf;
            int status;
            Py_BEGIN_ALLOW_THREADS
            for (Py_ssize_t i = 0; i < count; i++) {
                memcpy(nodes[i].hash, h + i * HASH_BYTES, HASH_BYTES);
                nodes[i].fee = (fee_t)f[i];
            }
            status = fold_levels(nodes, (size_t)count);
            Py_END_ALLOW_THREADS
            if (status < 0) {
                PyErr_SetString(PyExc_OverflowError, "the fee sum is beyond 128 bits");
            } else {
                uint8_t fee[FEE_BYTES];
                fee_write(nodes[0].fee, fee);
                result = Py_BuildValue("(y#y#)", nodes[0].hash, (Py_ssize_t)HASH_BYTES, fee, (Py_ssize_t)FEE_BYTES);
            }
            PyMem_RawFree(nodes);
        }
    }
    PyBuffer_Release(&hashes);
    PyBuffer_Release(&fees);
    return result;
}

static PyMethodDef module_methods[] = {
    {"group_roots", group_roots, METH_VARARGS,
     "group_roots(starts, source_offsets, source_data, id_offsets, id_data, fees) -> bytes; see the file's header"},
    {"root", root, METH_VARARGS, "root(hashes, fees) -> (hash, fee); see the file's header"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_sum_tree_native",
    .m_doc = "Native build of the payer-receipt sum trees (settlement/reports/sum_tree.py).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__sum_tree_native(void) { return PyModule_Create(&module); }
