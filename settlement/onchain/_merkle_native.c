/*
 * Native build of the payout Merkle tree for settlement/onchain/merkle.py: check the leaves, hash them, sort them
 * and hash every internal node, on up to `threads` threads that run without the GIL (no process is forked).
 *
 * Hashing is the vendored Keccak (vendor/README.md): XKCP's four permutations at once in 256-bit lanes, by its
 * AVX-512VL code where the CPU has AVX-512F and AVX-512VL, else by its AVX2 code where the CPU has AVX2, and
 * PQClean's portable code one message at a time elsewhere. Every message here (a 64-byte leaf encoding,
 * a 32-byte digest, a 40-character address body, a 64-byte pair) fits in one block. The layout is OpenZeppelin's
 * StandardMerkleTree, exactly as the Python path of merkle.py builds it: leaves sorted by hash and laid in
 * descending order at the end of one array of 2n-1 nodes, node p the hash of its children 2p+1 and 2p+2 in
 * ascending byte order.
 *
 * build(accounts, amounts, threads, seed, keccak) -> (tree, checksummed, tree_index, index)
 *   tree         bytes: the 2n-1 nodes of 32 bytes each, the root first;
 *   checksummed  bytes: the EIP-55 bodies (40 hex characters each), in the order given;
 *   tree_index   bytes: the tree position of each leaf in the order given, as native uint32;
 *   index        AccountIndex: `index.get(account_20_bytes)` is the account's position in the order given, or None.
 * build_columns(offsets, text, amounts, threads, seed, keccak) -> the same, from Arrow's buffers of a large_string
 *   column of n accounts (`offsets`: n + 1 int64, `text`: the characters) and an int64 column of n amounts (native
 *   byte order): no str or int object per leaf. Each account must take 42 characters ("0x" and 40 hex digits) and
 *   each amount be at least 0; LeafError names the first leaf that does not ("account", "amount_range").
 * `seed` keys the account hash table (so that chosen addresses cannot make its probes long); `keccak` is the
 * fastest Keccak code to use, if the CPU has it: 2 AVX-512VL, 1 AVX2, 0 the portable one (lower ones for tests).
 * Bad input raises LeafError(kind, index, other), checked in this order and
 * each naming its first offending leaf, as the Python path does: "amount_type", "amount_range", "account",
 * "duplicate" (`other`: the earlier leaf with that account), "checksum" (a mixed-case body that is not the EIP-55
 * checksum of the address).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_keccak_batch.h"

#define ACCOUNT_BYTES 20
#define BODY_CHARS 40
#define WORD_BYTES 32
#define LEAF_ENCODING_BYTES 64
#define THREADS_MAX 64
/* Below this many items a thread costs more to start than the work it takes over. */
#define ITEMS_PER_THREAD_MIN 4096
#define SORT_BUCKETS 65536

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_X4 1
#else
#define HAVE_X4 0
#endif

static PyObject *LeafError;

enum { KECCAK_PORTABLE = 0, KECCAK_AVX2 = 1, KECCAK_AVX512 = 2 };
static int cpu_keccak; /* the fastest of those this CPU runs */

/* ---- Keccak-256 of four one-block messages of `length` bytes, one after the other ---- */

static void keccak256_four(int keccak, const uint8_t *messages, unsigned int length, uint8_t *digests) {
#if HAVE_X4
    if (keccak == KECCAK_AVX512) {
        merkle_keccak256_x4_avx512(messages, length, digests);
        return;
    }
    if (keccak == KECCAK_AVX2) {
        merkle_keccak256_x4(messages, length, digests);
        return;
    }
#endif
    for (int i = 0; i < 4; i++) merkle_keccak256_one(messages + i * length, length, digests + i * KECCAK256_DIGEST_BYTES);
}

/* ---- threads: run fn over [0, count) split into up to `threads` ranges (boundaries multiples of 4) ---- */

typedef void (*range_fn)(void *ctx, size_t lo, size_t hi, int worker);

typedef struct {
    range_fn fn;
    void *ctx;
    size_t lo, hi;
    int worker;
} Job;

static void *job_run(void *arg) {
    Job *job = arg;
    job->fn(job->ctx, job->lo, job->hi, job->worker);
    return NULL;
}

static void run_parallel(range_fn fn, void *ctx, size_t count, int threads) {
    size_t workers = (size_t)threads;
    if (workers > count / ITEMS_PER_THREAD_MIN) workers = count / ITEMS_PER_THREAD_MIN;
    if (workers < 1) workers = 1;
    Job jobs[THREADS_MAX];
    pthread_t ids[THREADS_MAX];
    int started[THREADS_MAX];
    for (size_t w = 0; w < workers; w++) {
        jobs[w].fn = fn;
        jobs[w].ctx = ctx;
        jobs[w].lo = w == 0 ? 0 : (count * w / workers) & ~(size_t)3;
        jobs[w].hi = w + 1 == workers ? count : (count * (w + 1) / workers) & ~(size_t)3;
        jobs[w].worker = (int)w;
    }
    for (size_t w = 1; w < workers; w++) started[w] = pthread_create(&ids[w], NULL, job_run, &jobs[w]) == 0;
    job_run(&jobs[0]);
    for (size_t w = 1; w < workers; w++) {
        if (started[w])
            pthread_join(ids[w], NULL);
        else
            job_run(&jobs[w]); /* no thread could start: do its share here */
    }
}

/* ---- account hash table: from a 20-byte account to its position, keyed by a random seed ---- */

static uint64_t account_hash(const uint8_t *account, uint64_t seed) {
    uint64_t a, b;
    uint32_t c;
    memcpy(&a, account, 8);
    memcpy(&b, account + 8, 8);
    memcpy(&c, account + 16, 4);
    uint64_t h = (seed ^ a) * 0x9E3779B97F4A7C15ULL;
    h = ((h ^ (h >> 32)) ^ b) * 0xBF58476D1CE4E5B9ULL;
    h = ((h ^ (h >> 29)) ^ c) * 0x94D049BB133111EBULL;
    return h ^ (h >> 31);
}

typedef struct {
    PyObject_HEAD
    uint8_t *accounts; /* 20 bytes each, in the order given */
    uint32_t *slots;   /* position + 1, 0 when empty; linear probing */
    uint64_t mask;
    uint64_t seed;
} AccountIndex;

/* Insert every account in order; returns -1, or the first position whose account is already in (its earlier
   position in *earlier). */
static Py_ssize_t index_fill(AccountIndex *index, size_t count, Py_ssize_t *earlier) {
    for (size_t i = 0; i < count; i++) {
        const uint8_t *account = index->accounts + i * ACCOUNT_BYTES;
        uint64_t slot = account_hash(account, index->seed) & index->mask;
        while (index->slots[slot]) {
            uint32_t other = index->slots[slot] - 1;
            if (memcmp(index->accounts + (size_t)other * ACCOUNT_BYTES, account, ACCOUNT_BYTES) == 0) {
                *earlier = other;
                return (Py_ssize_t)i;
            }
            slot = (slot + 1) & index->mask;
        }
        index->slots[slot] = (uint32_t)i + 1;
    }
    return -1;
}

static PyObject *AccountIndex_get(AccountIndex *self, PyObject *arg) {
    char *account;
    Py_ssize_t length;
    if (!PyBytes_Check(arg) || PyBytes_AsStringAndSize(arg, &account, &length) < 0 || length != ACCOUNT_BYTES) {
        PyErr_SetString(PyExc_TypeError, "get() takes the account's 20 bytes");
        return NULL;
    }
    uint64_t slot = account_hash((const uint8_t *)account, self->seed) & self->mask;
    while (self->slots[slot]) {
        uint32_t position = self->slots[slot] - 1;
        if (memcmp(self->accounts + (size_t)position * ACCOUNT_BYTES, account, ACCOUNT_BYTES) == 0)
            return PyLong_FromUnsignedLong(position);
        slot = (slot + 1) & self->mask;
    }
    Py_RETURN_NONE;
}

static void AccountIndex_dealloc(AccountIndex *self) {
    PyMem_RawFree(self->accounts);
    PyMem_RawFree(self->slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef AccountIndex_methods[] = {
    {"get", (PyCFunction)AccountIndex_get, METH_O, "get(account_20_bytes) -> position in the order given, or None"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject AccountIndexType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "settlement.onchain._merkle_native.AccountIndex",
    .tp_basicsize = sizeof(AccountIndex),
    .tp_dealloc = (destructor)AccountIndex_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The tree's accounts, by their 20 bytes.",
    .tp_methods = AccountIndex_methods,
};

/* ---- the build ---- */

typedef struct {
    uint64_t key; /* the leaf hash's first 8 bytes, big-endian: sorts as the hash does */
    uint32_t position;
} SortKey;

typedef struct {
    size_t count;
    int keccak; /* KECCAK_*, at most cpu_keccak */
    const uint8_t *accounts;  /* 20 bytes per leaf, in the order given */
    const uint8_t *amounts;   /* 32 bytes per leaf, big-endian */
    PyObject *given;          /* the accounts' str objects (a tuple kept alive): their 40 characters as given */
    const uint8_t *given_text; /* or (build_columns) every account's 42 characters, one after the other */
    uint8_t *checksummed;     /* 40 characters per leaf, EIP-55 */
    uint8_t *leaves;          /* 32 bytes per leaf, in the order given (over `amounts`) */
    SortKey *keys;
    SortKey *sorted;
    size_t *bucket_starts; /* SORT_BUCKETS + 1 */
    uint8_t *tree;
    uint32_t *tree_index;
    size_t first_node; /* of the run of internal nodes being hashed */
    size_t bad_checksum[THREADS_MAX];
} Build;

static int hex_value[256];

static int mixed_case(const uint8_t *body) {
    int lower = 0, upper = 0;
    for (int c = 0; c < BODY_CHARS; c++) {
        lower |= body[c] >= 'a' && body[c] <= 'f';
        upper |= body[c] >= 'A' && body[c] <= 'F';
    }
    return lower && upper;
}

/* Without branches: whether a character is a letter and its nibble's high bit are random, and mispredicting
   them cost more than the Keccak of the leaves' bodies. */
static void checksum_body(const uint8_t *lower, const uint8_t *digest, uint8_t *out) {
    for (int c = 0; c < BODY_CHARS; c += 2) {
        uint8_t byte = digest[c / 2];
        out[c] = (uint8_t)(lower[c] - (((lower[c] >= 'a') & (byte >> 7)) << 5));
        out[c + 1] = (uint8_t)(lower[c + 1] - (((lower[c + 1] >= 'a') & ((byte >> 3) & 1)) << 5));
    }
}

static uint64_t big_endian_64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/* The 40 characters after "0x" of account `i` as given (each checked by parse_account first). Read without the GIL,
   as parse_account does: the fields of an immutable str the build's own tuple keeps alive, or the caller's buffer. */
static const uint8_t *given_body(const Build *b, size_t i) {
    if (b->given_text) return b->given_text + i * (2 + BODY_CHARS) + 2;
    return (const uint8_t *)PyUnicode_DATA(PyTuple_GET_ITEM(b->given, (Py_ssize_t)i)) + 2;
}

/* Leaf hashes and EIP-55 checksums of leaves [lo, hi). */
static void hash_leaves(void *ctx, size_t lo, size_t hi, int worker) {
    Build *b = ctx;
    /* Four leaves' abi.encode(account, amount) at a time, put together here: 12 zero bytes, the account, the amount
       (a buffer of them all was 64 MB of fresh memory at a million leaves, and its pages cost more than the copy). */
    uint8_t encodings[4 * LEAF_ENCODING_BYTES] = {0}, tail_leaves[4 * WORD_BYTES], bodies[4 * BODY_CHARS];
    uint8_t inner[4 * WORD_BYTES], digests[4 * WORD_BYTES];
    size_t bad = (size_t)-1;
    for (size_t i = lo; i < hi; i += 4) {
        size_t n = hi - i < 4 ? hi - i : 4;
        uint8_t *leaves = b->leaves + i * WORD_BYTES;
        if (n < 4) { /* the last few: padded with zeros, their extra digests dropped */
            memset(encodings, 0, sizeof encodings);
            memset(bodies, 0, sizeof bodies);
            leaves = tail_leaves;
        }
        for (size_t k = 0; k < n; k++) {
            uint8_t *encoding = encodings + k * LEAF_ENCODING_BYTES;
            memcpy(encoding + WORD_BYTES - ACCOUNT_BYTES, b->accounts + (i + k) * ACCOUNT_BYTES, ACCOUNT_BYTES);
            memcpy(encoding + WORD_BYTES, b->amounts + (i + k) * WORD_BYTES, WORD_BYTES);
            /* lowercase: 0x20 turns "A".."F" into "a".."f" and leaves the digits as they are */
            const uint8_t *given = given_body(b, i + k);
            for (int c = 0; c < BODY_CHARS; c++) bodies[k * BODY_CHARS + c] = given[c] | 0x20;
        }
        keccak256_four(b->keccak, encodings, LEAF_ENCODING_BYTES, inner);
        keccak256_four(b->keccak, inner, WORD_BYTES, leaves);
        keccak256_four(b->keccak, bodies, BODY_CHARS, digests);
        if (n < 4) memcpy(b->leaves + i * WORD_BYTES, tail_leaves, n * WORD_BYTES);
        for (size_t k = 0; k < n; k++) {
            size_t at = i + k;
            uint8_t *out = b->checksummed + at * BODY_CHARS;
            checksum_body(bodies + k * BODY_CHARS, digests + k * WORD_BYTES, out);
            const uint8_t *given = given_body(b, at);
            if (bad == (size_t)-1 && memcmp(out, given, BODY_CHARS) != 0 && mixed_case(given)) bad = at;
            b->keys[at].key = big_endian_64(b->leaves + at * WORD_BYTES);
            b->keys[at].position = (uint32_t)at;
        }
    }
    b->bad_checksum[worker] = bad;
}

/* qsort has no context argument: the leaves of the build this thread sorts. */
static _Thread_local const uint8_t *sort_leaves;

static int key_compare(const void *x, const void *y) {
    const SortKey *a = x, *b = y;
    if (a->key != b->key) return a->key < b->key ? -1 : 1;
    return memcmp(sort_leaves + (size_t)a->position * WORD_BYTES, sort_leaves + (size_t)b->position * WORD_BYTES,
                  WORD_BYTES);
}

/* Sort buckets [lo, hi) of the 16-bit radix pass by the whole hash. */
static void sort_buckets(void *ctx, size_t lo, size_t hi, int worker) {
    Build *b = ctx;
    sort_leaves = b->leaves;
    for (size_t bucket = lo; bucket < hi; bucket++) {
        SortKey *items = b->sorted + b->bucket_starts[bucket];
        size_t n = b->bucket_starts[bucket + 1] - b->bucket_starts[bucket];
        if (n > 1) qsort(items, n, sizeof *items, key_compare);
    }
}

/* Lay leaves of ascending rank [lo, hi) into the tree, the smallest last. */
static void place_leaves(void *ctx, size_t lo, size_t hi, int worker) {
    Build *b = ctx;
    size_t last = 2 * b->count - 2;
    for (size_t rank = lo; rank < hi; rank++) {
        uint32_t position = b->sorted[rank].position;
        memcpy(b->tree + (last - rank) * WORD_BYTES, b->leaves + (size_t)position * WORD_BYTES, WORD_BYTES);
        b->tree_index[position] = (uint32_t)(last - rank);
    }
}

/* Hash internal nodes first_node + [lo, hi), whose children are all already hashed. */
static void hash_nodes(void *ctx, size_t lo, size_t hi, int worker) {
    Build *b = ctx;
    uint8_t pairs[4 * 2 * WORD_BYTES], tail_parents[4 * WORD_BYTES];
    for (size_t i = lo; i < hi; i += 4) {
        size_t n = hi - i < 4 ? hi - i : 4;
        if (n < 4) memset(pairs, 0, sizeof pairs);
        for (size_t k = 0; k < n; k++) {
            size_t node = b->first_node + i + k;
            const uint8_t *left = b->tree + (2 * node + 1) * WORD_BYTES, *right = left + WORD_BYTES;
            int ascending = memcmp(left, right, WORD_BYTES) < 0;
            memcpy(pairs + k * 2 * WORD_BYTES, ascending ? left : right, WORD_BYTES);
            memcpy(pairs + k * 2 * WORD_BYTES + WORD_BYTES, ascending ? right : left, WORD_BYTES);
        }
        uint8_t *parents = b->tree + (b->first_node + i) * WORD_BYTES;
        keccak256_four(b->keccak, pairs, 2 * WORD_BYTES, n < 4 ? tail_parents : parents);
        if (n < 4) memcpy(parents, tail_parents, n * WORD_BYTES);
    }
}

static void build_tree(Build *b, int threads) {
    size_t n = b->count;
    size_t *starts = b->bucket_starts;
    memset(starts, 0, (SORT_BUCKETS + 1) * sizeof *starts);
    for (size_t i = 0; i < n; i++) starts[(b->keys[i].key >> 48) + 1]++;
    for (size_t bucket = 0; bucket < SORT_BUCKETS; bucket++) starts[bucket + 1] += starts[bucket];
    for (size_t i = 0; i < n; i++) b->sorted[starts[b->keys[i].key >> 48]++] = b->keys[i];
    /* the scatter advanced each start to the next bucket's: shift back */
    memmove(starts + 1, starts, SORT_BUCKETS * sizeof *starts);
    starts[0] = 0;
    run_parallel(sort_buckets, b, SORT_BUCKETS, threads);
    run_parallel(place_leaves, b, n, threads);
    /* Nodes (last + 1) / 2 .. last have all their children past `last`: one run at a time, as merkle.py. */
    for (Py_ssize_t last = (Py_ssize_t)n - 2; last >= 0;) {
        size_t first = (size_t)(last + 1) / 2;
        b->first_node = first;
        run_parallel(hash_nodes, b, (size_t)last - first + 1, threads);
        last = (Py_ssize_t)first - 1;
    }
}

static int leaf_error(const char *kind, Py_ssize_t index, Py_ssize_t other) {
    PyObject *args = Py_BuildValue("(snn)", kind, index, other);
    if (args) {
        PyErr_SetObject(LeafError, args);
        Py_DECREF(args);
    }
    return -1;
}

/* The amount's 32 big-endian bytes into `word`; LeafError if it is not an int in [0, 2**256). */
static int parse_amount(PyObject *amount, Py_ssize_t i, uint8_t *word) {
    if (!PyLong_CheckExact(amount)) return leaf_error("amount_type", i, -1);
    int overflow = 0;
    long long value = PyLong_AsLongLongAndOverflow(amount, &overflow);
    if (value == -1 && PyErr_Occurred()) return -1;
    if (overflow < 0 || (overflow == 0 && value < 0)) return leaf_error("amount_range", i, -1);
    if (overflow == 0) {
        for (int k = 0; k < 8; k++) word[WORD_BYTES - 1 - k] = (uint8_t)((unsigned long long)value >> (8 * k));
        return 0;
    }
    PyObject *bytes = PyObject_CallMethod(amount, "to_bytes", "is", WORD_BYTES, "big");
    if (!bytes) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;
        PyErr_Clear();
        return leaf_error("amount_range", i, -1);
    }
    memcpy(word, PyBytes_AS_STRING(bytes), WORD_BYTES);
    Py_DECREF(bytes);
    return 0;
}

/* "0x" and 40 hex digits at `text`: the account's bytes into `raw`; 0 if they are not. */
static int parse_text(const uint8_t *text, uint8_t *raw) {
    if (text[0] != '0' || text[1] != 'x') return 0;
    for (int c = 0; c < BODY_CHARS; c += 2) {
        int high = hex_value[text[2 + c]], low = hex_value[text[3 + c]];
        if (high < 0 || low < 0) return 0;
        raw[c / 2] = (uint8_t)(high << 4 | low);
    }
    return 1;
}

/* The same of a str; 0 if it is not one of 42 ASCII characters.
   Runs without the GIL: it only reads the fields of a str that the build's own tuple keeps alive (str is
   immutable), through the macros that read them, and calls no function of the C API. */
static int parse_account(PyObject *account, uint8_t *raw) {
    if (!PyUnicode_CheckExact(account) || PyUnicode_GET_LENGTH(account) != 2 + BODY_CHARS ||
        !PyUnicode_IS_ASCII(account))
        return 0;
    return parse_text(PyUnicode_DATA(account), raw);
}

typedef struct {
    PyObject *accounts; /* a tuple: its items stay alive while the GIL is released */
    const uint8_t *text; /* or every account's 42 characters, one after the other (build_columns) */
    uint8_t *index_accounts;
    size_t bad_account[THREADS_MAX];
} ParseContext;

static void parse_accounts(void *ctx, size_t lo, size_t hi, int worker) {
    ParseContext *p = ctx;
    size_t bad = (size_t)-1;
    for (size_t i = lo; i < hi && bad == (size_t)-1; i++) {
        uint8_t *raw = p->index_accounts + i * ACCOUNT_BYTES;
        int ok = p->text ? parse_text(p->text + i * (2 + BODY_CHARS), raw)
                         : parse_account(PyTuple_GET_ITEM(p->accounts, i), raw);
        if (!ok) bad = i;
    }
    p->bad_account[worker] = bad;
}

typedef struct {
    AccountIndex *index;
    size_t count;
    Py_ssize_t duplicate, earlier;
} IndexJob;

static void *index_run(void *arg) {
    IndexJob *job = arg;
    job->duplicate = index_fill(job->index, job->count, &job->earlier);
    return NULL;
}

static size_t first_of(const size_t *firsts) {
    size_t first = (size_t)-1;
    for (int w = 0; w < THREADS_MAX; w++)
        if (firsts[w] < first) first = firsts[w];
    return first;
}

/* Where a build's leaves come from: lists of str and int (build), or Arrow's buffers (build_columns). */
typedef struct {
    PyObject *accounts, *amounts; /* lists, or NULL */
    const uint8_t *text;          /* n accounts of 42 characters each, one after the other */
    const int64_t *amounts_64;    /* n amounts */
} Leaves;

static int parse_amounts(const Leaves *in, size_t n, uint8_t *amounts) {
    for (size_t i = 0; i < n; i++) {
        uint8_t *word = amounts + i * WORD_BYTES;
        if (in->amounts) {
            if (parse_amount(PyList_GET_ITEM(in->amounts, i), (Py_ssize_t)i, word) < 0) return -1;
            continue;
        }
        int64_t value;
        memcpy(&value, in->amounts_64 + i, sizeof value);
        if (value < 0) return leaf_error("amount_range", (Py_ssize_t)i, -1);
        for (int k = 0; k < 8; k++) word[WORD_BYTES - 1 - k] = (uint8_t)((uint64_t)value >> (8 * k));
    }
    return 0;
}

static PyObject *build_leaves(const Leaves *in, size_t n, int threads, unsigned long long seed, int keccak) {
    if (threads < 1) threads = 1;
    if (threads > THREADS_MAX) threads = THREADS_MAX;
    size_t slots = 8;
    while (slots < 2 * n) slots *= 2;

    PyObject *result = NULL, *accounts = NULL, *tree = NULL, *checksummed = NULL, *tree_index = NULL;
    AccountIndex *index = NULL;
    Build b = {.count = n, .keccak = keccak < cpu_keccak ? (keccak < 0 ? 0 : keccak) : cpu_keccak, .given_text = in->text};
    /* Plain pages: asking for 2 MiB ones (MADV_HUGEPAGE) cost more system time zeroing them than it saved in faults
       (benchmarks/RESULTS.md, issue 17). */
    uint8_t *amounts = PyMem_RawCalloc(n, WORD_BYTES);
    SortKey *keys = PyMem_RawMalloc(2 * n * sizeof(SortKey));
    size_t *starts = PyMem_RawMalloc((SORT_BUCKETS + 1) * sizeof(size_t));
    tree = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)((2 * n - 1) * WORD_BYTES));
    checksummed = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * BODY_CHARS));
    tree_index = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * sizeof(uint32_t)));
    index = PyObject_New(AccountIndex, &AccountIndexType);
    if (index) {
        index->accounts = PyMem_RawMalloc(n * ACCOUNT_BYTES);
        index->slots = PyMem_RawCalloc(slots, sizeof(uint32_t));
        index->mask = slots - 1;
        index->seed = seed;
    }
    if (!amounts || !keys || !starts || !tree || !checksummed || !tree_index || !index ||
        !index->accounts || !index->slots) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    b.accounts = index->accounts;
    b.amounts = amounts;
    b.checksummed = (uint8_t *)PyBytes_AS_STRING(checksummed);
    b.leaves = amounts; /* each leaf's hash replaces its amount: hash_leaves reads four amounts, then writes four hashes */
    b.keys = keys;
    b.sorted = keys + n;
    b.bucket_starts = starts;
    b.tree = (uint8_t *)PyBytes_AS_STRING(tree);
    b.tree_index = (uint32_t *)PyBytes_AS_STRING(tree_index);

    if (parse_amounts(in, n, amounts) < 0) goto done;
    if (in->accounts) {
        accounts = PySequence_Tuple(in->accounts);
        if (!accounts) goto done;
    }
    b.given = accounts;
    ParseContext parse = {accounts, in->text, index->accounts, {0}};
    IndexJob index_job = {index, n, -1, -1};
    size_t bad_account, bad_checksum = (size_t)-1;
    Py_BEGIN_ALLOW_THREADS
    for (int w = 0; w < THREADS_MAX; w++) parse.bad_account[w] = b.bad_checksum[w] = (size_t)-1;
    run_parallel(parse_accounts, &parse, n, threads);
    bad_account = first_of(parse.bad_account);
    if (bad_account == (size_t)-1) {
        /* the account index (sequential: the first repeat is named) alongside the leaf hashing */
        pthread_t indexing;
        int index_started = threads > 1 && pthread_create(&indexing, NULL, index_run, &index_job) == 0;
        run_parallel(hash_leaves, &b, n, threads);
        bad_checksum = first_of(b.bad_checksum);
        if (index_started)
            pthread_join(indexing, NULL);
        else
            index_run(&index_job);
        if (index_job.duplicate < 0 && bad_checksum == (size_t)-1) build_tree(&b, threads);
    }
    Py_END_ALLOW_THREADS
    if (bad_account != (size_t)-1) {
        leaf_error("account", (Py_ssize_t)bad_account, -1);
        goto done;
    }
    if (index_job.duplicate >= 0) {
        leaf_error("duplicate", index_job.duplicate, index_job.earlier);
        goto done;
    }
    if (bad_checksum != (size_t)-1) {
        leaf_error("checksum", (Py_ssize_t)bad_checksum, -1);
        goto done;
    }
    result = PyTuple_Pack(4, tree, checksummed, tree_index, (PyObject *)index);

done:
    PyMem_RawFree(amounts);
    PyMem_RawFree(keys);
    PyMem_RawFree(starts);
    Py_XDECREF(accounts);
    Py_XDECREF(tree);
    Py_XDECREF(checksummed);
    Py_XDECREF(tree_index);
    Py_XDECREF((PyObject *)index);
    return result;
}

static PyObject *build(PyObject *module, PyObject *args) {
    PyObject *accounts_in, *amounts_in;
    int threads, keccak;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "OOiKi", &accounts_in, &amounts_in, &threads, &seed, &keccak)) return NULL;
    if (!PyList_CheckExact(accounts_in) || !PyList_CheckExact(amounts_in) ||
        PyList_GET_SIZE(accounts_in) != PyList_GET_SIZE(amounts_in) || PyList_GET_SIZE(accounts_in) < 1 ||
        PyList_GET_SIZE(accounts_in) > (Py_ssize_t)(UINT32_MAX / 4)) {
        PyErr_SetString(PyExc_ValueError, "build() takes two lists of the same length, at least 1 and below 2**30");
        return NULL;
    }
    Leaves in = {.accounts = accounts_in, .amounts = amounts_in};
    return build_leaves(&in, (size_t)PyList_GET_SIZE(accounts_in), threads, seed, keccak);
}

/* The first account of the column whose characters are not 42 (its offsets go up by 42 from the first), or -1. */
static Py_ssize_t first_not_42(const int64_t *offsets, size_t n) {
    for (size_t i = 0; i < n; i++) {
        int64_t low, high;
        memcpy(&low, offsets + i, sizeof low);
        memcpy(&high, offsets + i + 1, sizeof high);
        if (high - low != 2 + BODY_CHARS) return (Py_ssize_t)i;
    }
    return -1;
}

static PyObject *build_columns(PyObject *module, PyObject *args) {
    Py_buffer offsets, text, amounts;
    int threads, keccak;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "y*y*y*iKi", &offsets, &text, &amounts, &threads, &seed, &keccak)) return NULL;
    PyObject *result = NULL;
    size_t n = (size_t)amounts.len / sizeof(int64_t);
    int64_t first = 0, last = 0;
    if (n >= 1) {
        memcpy(&first, offsets.buf, sizeof first);
        memcpy(&last, (const int64_t *)offsets.buf + n, sizeof last);
    }
    if (n < 1 || n > UINT32_MAX / 4 || amounts.len % sizeof(int64_t) != 0 ||
        (size_t)offsets.len != (n + 1) * sizeof(int64_t) || first < 0 || last < first || last > text.len) {
        PyErr_SetString(PyExc_ValueError, "build_columns() takes a large_string column's offsets and characters and "
                                          "an int64 column of the same length, at least 1 and below 2**30");
        goto done;
    }
    Py_ssize_t bad = first_not_42(offsets.buf, n);
    if (bad >= 0) {
        leaf_error("account", bad, -1);
        goto done;
    }
    Leaves in = {.text = (const uint8_t *)text.buf + first, .amounts_64 = amounts.buf};
    result = build_leaves(&in, n, threads, seed, keccak);
done:
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&text);
    PyBuffer_Release(&amounts);
    return result;
}

/* proof(tree, tree_index, as_hex) -> the siblings from that node up to the root, as bytes or as "0x" hex str. */
static PyObject *proof(PyObject *module, PyObject *args) {
    Py_buffer tree;
    Py_ssize_t node;
    int as_hex;
    if (!PyArg_ParseTuple(args, "y*np", &tree, &node, &as_hex)) return NULL;
    PyObject *siblings = NULL;
    Py_ssize_t nodes = tree.len / WORD_BYTES;
    if (tree.len % WORD_BYTES != 0 || node < 0 || node >= nodes) {
        PyErr_SetString(PyExc_ValueError, "proof() takes a tree of 32-byte nodes and one of its node indexes");
        goto done;
    }
    siblings = PyList_New(0);
    for (; siblings && node > 0; node = (node - 1) / 2) {
        const uint8_t *sibling = (const uint8_t *)tree.buf + (node % 2 ? node + 1 : node - 1) * WORD_BYTES;
        PyObject *item;
        if (as_hex) {
            static const char digits[] = "0123456789abcdef";
            item = PyUnicode_New(2 + 2 * WORD_BYTES, 127);
            if (item) {
                Py_UCS1 *text = PyUnicode_1BYTE_DATA(item);
                text[0] = '0';
                text[1] = 'x';
                for (int k = 0; k < WORD_BYTES; k++) {
                    text[2 + 2 * k] = (Py_UCS1)digits[sibling[k] >> 4];
                    text[3 + 2 * k] = (Py_UCS1)digits[sibling[k] & 15];
                }
            }
        } else {
            item = PyBytes_FromStringAndSize((const char *)sibling, WORD_BYTES);
        }
        if (!item || PyList_Append(siblings, item) < 0) Py_CLEAR(siblings);
        Py_XDECREF(item);
    }
done:
    PyBuffer_Release(&tree);
    return siblings;
}

static PyObject *implementation(PyObject *module, PyObject *unused) {
    static const char *const names[] = {"pqclean-portable", "xkcp-avx2-x4", "xkcp-avx512-x4"};
    return PyUnicode_FromString(names[cpu_keccak]);
}

static PyMethodDef module_methods[] = {
    {"build", build, METH_VARARGS,
     "build(accounts, amounts, threads, seed, keccak) -> (tree, checksummed, tree_index, index); "
     "see the file's header"},
    {"build_columns", build_columns, METH_VARARGS,
     "build_columns(offsets, text, amounts, threads, seed, keccak) -> (tree, checksummed, tree_index, index); "
     "see the file's header"},
    {"proof", proof, METH_VARARGS,
     "proof(tree, tree_index, as_hex) -> list of the siblings from that node up to the root (bytes or '0x' hex)"},
    {"implementation", implementation, METH_NOARGS,
     "The fastest Keccak code this CPU runs: 'xkcp-avx512-x4', 'xkcp-avx2-x4' or 'pqclean-portable'."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_merkle_native",
    .m_doc = "Native build of the payout Merkle tree (settlement/onchain/merkle.py).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__merkle_native(void) {
    for (int c = 0; c < 256; c++) hex_value[c] = -1;
    for (int c = 0; c < 10; c++) hex_value['0' + c] = c;
    for (int c = 0; c < 6; c++) hex_value['a' + c] = hex_value['A' + c] = 10 + c;
#if HAVE_X4
    __builtin_cpu_init();
    cpu_keccak = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") ? KECCAK_AVX512
                 : __builtin_cpu_supports("avx2")                                          ? KECCAK_AVX2
                                                                                           : KECCAK_PORTABLE;
#endif
    if (PyType_Ready(&AccountIndexType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    LeafError = PyErr_NewException("settlement.onchain._merkle_native.LeafError", PyExc_ValueError, NULL);
    if (!LeafError || PyModule_AddObject(m, "LeafError", LeafError) < 0) {
        Py_XDECREF(LeafError);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(LeafError);
    return m;
}
