/*
 * Compiled grouped union of postgresql-hll register sets (``hll_union_agg ... GROUP BY``
 * with ``hll_cardinality`` and the union bytes), for ``_vector._estimate_compiled``.
 *
 * Why compiled: the numpy reference (``_vector._estimate_exact``) needs about 15 array
 * passes per batch of groups (base rows, renumbering, scatter-max with tags, bincounts,
 * the nonzero scan of the packed union) and was the largest part of a batch worker's
 * time on the real data's all-SPARSE values. Here each group is one pass over its
 * rows' entries into one m-byte register array, with the exact integer register sum
 * and zero count kept as registers change. No library does this: postgresql-hll's own
 * C needs a server, and python-hll does not import on numpy 2.
 *
 * Semantics are those of the numpy reference, which is tested against PostgreSQL and
 * against this kernel (homeloc_tests/test_hll_kernel.py):
 *   - every row of a group contributes registers: SPARSE entries (index, value),
 *     FULL registers (``regwidth`` bits each, big-endian bit stream), EXPLICIT hashes
 *     (index = low log2m bits, value = 1 + trailing zeros of the rest, capped);
 *   - the register sum is the integer sum of 2**(max_register - r): exact, like
 *     hll.c's double sum while log2m + 1 + max_register <= 53 (checked);
 *   - the union bytes are SPARSE when sparseon and n_filled * (log2m + w) < m * w,
 *     else FULL (hll.c ``multiset_pack`` with the automatic sparse cutoff).
 * The rows' contents were validated by ``_inspect._parse``; the kernel still checks
 * every offset and register index against its buffers and fails with ValueError.
 * The GIL is released while groups are unioned, so threads run in parallel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* bump when the interface or the semantics change: _vector checks it */
#define KERNEL_VERSION 2

enum { KIND_SPARSE = 0, KIND_FULL = 1, KIND_EXPLICIT = 2 };

typedef struct {
    uint8_t *out;
    uint64_t acc;
    int nbits;
} BitWriter;

static inline void bw_put(BitWriter *w, uint64_t v, int n) {
    /* fewer than 8 bits are pending, n <= 38: acc never loses a pending bit */
    w->acc = (w->acc << n) | v;
    w->nbits += n;
    while (w->nbits >= 8) {
        w->nbits -= 8;
        *w->out++ = (uint8_t)(w->acc >> w->nbits);
    }
}

static inline void bw_flush(BitWriter *w) {
    if (w->nbits) {
        *w->out++ = (uint8_t)(w->acc << (8 - w->nbits));
        w->nbits = 0;
    }
}

typedef struct {
    uint8_t *reg;      /* m registers, all 0 between groups */
    uint64_t *filled;  /* bitmap of the nonzero registers */
    int64_t weight[64];
    int64_t sum;
    int64_t zeros;
} Group;

static inline void raise_reg(Group *gr, uint32_t idx, uint8_t v) {
    uint8_t old = gr->reg[idx];
    if (v > old) {
        if (!old) {
            gr->zeros--;
            gr->filled[idx >> 6] |= 1ULL << (idx & 63);
        }
        gr->sum += gr->weight[v] - gr->weight[old];
        gr->reg[idx] = v;
    }
}

/* The registers of a FULL payload at p raised into gr: eight registers are regwidth whole
 * bytes (m is a multiple of 8), read as one word; branch-free per register. */
static inline void raise_full8(Group *gr, const uint8_t *p, int64_t m, int w) {
    const unsigned mask = (1u << w) - 1;
    int64_t sum = gr->sum, zeros = gr->zeros;
    for (int64_t i = 0; i < m; i += 8, p += w) {
        uint64_t word = 0;
        for (int k = 0; k < w; k++) word = (word << 8) | p[k];
        uint64_t newly_filled = 0;
        for (int j = 0; j < 8; j++) {
            uint8_t v = (uint8_t)((word >> (w * (7 - j))) & mask);
            uint8_t old = gr->reg[i + j];
            uint8_t nv = v > old ? v : old;
            sum += gr->weight[nv] - gr->weight[old];
            uint64_t newly = (old == 0) & (nv != 0);
            zeros -= (int64_t)newly;
            newly_filled |= newly << ((i + j) & 63);
            gr->reg[i + j] = nv;
        }
        gr->filled[i >> 6] |= newly_filled;
    }
    gr->sum = sum;
    gr->zeros = zeros;
}

static const char *ERR_OFFSETS = "hll kernel: row offsets outside their buffer";
static const char *ERR_INDEX = "hll kernel: register index out of range";
static const char *ERR_VALUE = "hll kernel: register value out of range";
static const char *ERR_KIND = "hll kernel: unknown row kind";
static const char *ERR_SPACE = "hll kernel: output buffer too small";
static const char *ERR_GROUPS = "hll kernel: group offsets outside the row list";

typedef struct {
    Py_buffer grp_off, kind, lo, hi, s_index, s_value, padded, x_values;
    Py_buffer hdr_sparse, hdr_full, reg_sum, zeros, out, out_off;
} Buffers;

static void release_all(Buffers *b) {
    Py_buffer *all[] = {&b->grp_off, &b->kind, &b->lo, &b->hi, &b->s_index, &b->s_value,
                        &b->padded, &b->x_values, &b->hdr_sparse, &b->hdr_full, &b->reg_sum,
                        &b->zeros, &b->out, &b->out_off};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        if (all[i]->obj) PyBuffer_Release(all[i]);
}

/*
 * union_groups(grp_off, kind, lo, hi, s_index, index_size, s_value, padded, x_values,
 *              log2m, regwidth, sparseon, g0, g1, hdr_sparse, hdr_full,
 *              reg_sum, zeros, out, out_off) -> bytes written to out
 *
 * Groups g0..g1-1; group g's rows are kind/lo/hi[grp_off[g]:grp_off[g+1]] (int64 offsets,
 * uint8 kinds, int64 lo/hi): SPARSE rows entries s_index/s_value[lo:hi] (index_size 2 or 4
 * bytes per index, native order), FULL rows the payload at padded[lo], EXPLICIT rows
 * x_values[lo:hi] (int64). Writes reg_sum[g] (sum of 2**(max_register - r)) and zeros[g];
 * when out is not empty, the union bytes of group g0 + k at out[out_off[k]:out_off[k+1]].
 */
static PyObject *union_groups(PyObject *self, PyObject *args) {
    (void)self;
    Buffers b;
    memset(&b, 0, sizeof(b));
    int index_size, log2m, regwidth, sparseon;
    Py_ssize_t g0, g1;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*iy*y*y*iiinny*y*w*w*w*w*", &b.grp_off, &b.kind,
                          &b.lo, &b.hi, &b.s_index, &index_size, &b.s_value, &b.padded,
                          &b.x_values, &log2m, &regwidth, &sparseon, &g0, &g1, &b.hdr_sparse,
                          &b.hdr_full, &b.reg_sum, &b.zeros, &b.out, &b.out_off)) {
        release_all(&b);
        return NULL;
    }
    const char *err = NULL;
    if (log2m < 0 || log2m > 17 || regwidth < 1 || regwidth > 5 ||
        log2m + 1 + ((1 << regwidth) - 1) > 53 || (index_size != 2 && index_size != 4)) {
        release_all(&b);
        PyErr_SetString(PyExc_ValueError, "hll kernel: unsupported parameters");
        return NULL;
    }
    const int max_register = (1 << regwidth) - 1;
    const int64_t m = (int64_t)1 << log2m;
    const Py_ssize_t n_rows = b.kind.len;
    const Py_ssize_t n_groups_off = b.grp_off.len / 8;
    const int with_bytes = b.out.len > 0;
    const int64_t full_bytes = (m * regwidth + 7) / 8;
    if (g0 < 0 || g1 < g0 || g1 + 1 > n_groups_off || b.lo.len / 8 < n_rows ||
        b.hi.len / 8 < n_rows || b.reg_sum.len / 8 < g1 || b.zeros.len / 8 < g1 ||
        b.hdr_sparse.len != 3 || b.hdr_full.len != 3 ||
        (with_bytes && b.out_off.len / 8 < g1 - g0 + 1)) {
        release_all(&b);
        PyErr_SetString(PyExc_ValueError, "hll kernel: buffer sizes do not match");
        return NULL;
    }
    const int64_t *grp_off = b.grp_off.buf, *lo = b.lo.buf, *hi = b.hi.buf;
    const uint8_t *kind = b.kind.buf, *s_value = b.s_value.buf, *padded = b.padded.buf;
    const int64_t *x_values = b.x_values.buf;
    const int64_t n_entries = b.s_value.len;
    const int64_t n_index = b.s_index.len / index_size;
    const int64_t n_x = b.x_values.len / 8;
    const int64_t n_padded = b.padded.len;
    const uint8_t *hs = b.hdr_sparse.buf, *hf = b.hdr_full.buf;
    int64_t *reg_sum = b.reg_sum.buf, *zeros = b.zeros.buf, *out_off = b.out_off.buf;
    uint8_t *out = b.out.buf;
    const int64_t out_cap = b.out.len;

    Group gr;
    const int64_t n_words = (m + 63) / 64;
    gr.reg = calloc((size_t)m, 1);
    gr.filled = calloc((size_t)n_words, 8);
    if (!gr.reg || !gr.filled) {
        free(gr.reg);
        free(gr.filled);
        release_all(&b);
        return PyErr_NoMemory();
    }
    for (int r = 0; r <= max_register; r++) gr.weight[r] = (int64_t)1 << (max_register - r);
    const uint64_t mask = (uint64_t)(m - 1);
    const int field_bits = log2m + regwidth;
    const unsigned reg_mask = (1u << regwidth) - 1;
    int64_t written = 0;

    Py_BEGIN_ALLOW_THREADS
    if (with_bytes) out_off[0] = 0;
    for (Py_ssize_t g = g0; g < g1 && !err; g++) {
        gr.sum = m * gr.weight[0];
        gr.zeros = m;
        const int64_t r0 = grp_off[g], r1 = grp_off[g + 1];
        if (r0 < 0 || r1 < r0 || r1 > n_rows) {
            err = ERR_GROUPS;
            break;
        }
        for (int64_t r = r0; r < r1 && !err; r++) {
            const int64_t a = lo[r], z = hi[r];
            switch (kind[r]) {
            case KIND_SPARSE:
                if (a < 0 || z < a || z > n_entries || z > n_index) {
                    err = ERR_OFFSETS;
                    break;
                }
                for (int64_t e = a; e < z; e++) {
                    uint32_t idx = index_size == 2 ? ((const uint16_t *)b.s_index.buf)[e]
                                                   : ((const uint32_t *)b.s_index.buf)[e];
                    uint8_t v = s_value[e];
                    if (idx >= (uint64_t)m) {
                        err = ERR_INDEX;
                        break;
                    }
                    if (v > max_register) {
                        err = ERR_VALUE;
                        break;
                    }
                    raise_reg(&gr, idx, v);
                }
                break;
            case KIND_FULL:
                if (a < 0 || a > n_padded - full_bytes - 1) {
                    err = ERR_OFFSETS;
                    break;
                }
                if (m % 8 == 0) {
                    raise_full8(&gr, padded + a, m, regwidth);
                    break;
                }
                for (int64_t i = 0; i < m; i++) {
                    int64_t bit = i * regwidth;
                    const uint8_t *p = padded + a + (bit >> 3);
                    unsigned two = ((unsigned)p[0] << 8) | p[1];
                    uint8_t v = (uint8_t)((two >> (16 - regwidth - (bit & 7))) & reg_mask);
                    if (v) raise_reg(&gr, (uint32_t)i, v);
                }
                break;
            case KIND_EXPLICIT:
                if (a < 0 || z < a || z > n_x) {
                    err = ERR_OFFSETS;
                    break;
                }
                for (int64_t e = a; e < z; e++) {
                    uint64_t u = (uint64_t)x_values[e];
                    uint64_t rest = u >> log2m;
                    if (!rest) continue;
                    int rho = __builtin_ctzll(rest) + 1;
                    if (rho > max_register) rho = max_register;
                    raise_reg(&gr, (uint32_t)(u & mask), (uint8_t)rho);
                }
                break;
            default:
                err = ERR_KIND;
            }
        }
        if (err) break;
        reg_sum[g] = gr.sum;
        zeros[g] = gr.zeros;
        if (with_bytes) {
            if (out_cap - written < 3 + full_bytes) {
                err = ERR_SPACE;
                break;
            }
            const int64_t n_filled = m - gr.zeros;
            BitWriter w = {out + written, 0, 0};
            if (sparseon && n_filled * field_bits < m * regwidth) {
                memcpy(w.out, hs, 3);
                w.out += 3;
                for (int64_t k = 0; k < n_words; k++) {
                    uint64_t word = gr.filled[k];
                    while (word) {
                        uint32_t idx = (uint32_t)(k * 64 + __builtin_ctzll(word));
                        bw_put(&w, ((uint64_t)idx << regwidth) | gr.reg[idx], field_bits);
                        word &= word - 1;
                    }
                }
            } else {
                memcpy(w.out, hf, 3);
                w.out += 3;
                if (m % 8 == 0) { /* eight registers are regwidth whole bytes */
                    for (int64_t i = 0; i < m; i += 8) {
                        uint64_t word = 0;
                        for (int j = 0; j < 8; j++) word = (word << regwidth) | gr.reg[i + j];
                        for (int k = regwidth - 1; k >= 0; k--) *w.out++ = (uint8_t)(word >> (8 * k));
                    }
                } else {
                    for (int64_t i = 0; i < m; i++) bw_put(&w, gr.reg[i], regwidth);
                }
            }
            bw_flush(&w);
            written = w.out - out;
            out_off[g - g0 + 1] = written;
        }
        for (int64_t k = 0; k < n_words; k++) { /* back to all-zero registers */
            uint64_t word = gr.filled[k];
            while (word) {
                gr.reg[k * 64 + __builtin_ctzll(word)] = 0;
                word &= word - 1;
            }
            gr.filled[k] = 0;
        }
    }
    Py_END_ALLOW_THREADS

    free(gr.reg);
    free(gr.filled);
    release_all(&b);
    if (err) {
        PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    return PyLong_FromLongLong(written);
}

/*
 * unhex_rows(data, offsets, out) -> 0, or -1 at the first character that is not a hex digit
 *
 * Rows data[offsets[i]:offsets[i+1]] are each "\\x" and an even number of characters
 * (``_hex.unhex_many`` checked that); their digits are decoded into out, row after row,
 * without copying them out of the text column first.
 */
static PyObject *unhex_rows(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer data, offs, out;
    if (!PyArg_ParseTuple(args, "y*y*w*", &data, &offs, &out)) return NULL;
    static signed char value[256];
    static int ready = 0;
    if (!ready) {
        for (int c = 0; c < 256; c++) value[c] = -1;
        for (int c = 0; c < 10; c++) value['0' + c] = (signed char)c;
        for (int c = 0; c < 6; c++) value['a' + c] = value['A' + c] = (signed char)(10 + c);
        ready = 1;
    }
    const uint8_t *d = data.buf;
    const int64_t *o = offs.buf;
    const int64_t n = offs.len / 8 - 1;
    uint8_t *w = out.buf, *end = w + out.len;
    int bad = 0; /* 1: a character that is not a hex digit; 2: rows outside their buffers */
    if (n < 0 || o[0] < 0 || o[n] > data.len) bad = 2;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t i = 0; i < n && !bad; i++) {
        int64_t a = o[i] + 2, z = o[i + 1];
        if (o[i] < 0 || z < a || z > data.len || (z - a) % 2 || (z - a) / 2 > end - w) {
            bad = 2;
            break;
        }
        for (int64_t k = a; k < z; k += 2) {
            int hi = value[d[k]], lo = value[d[k + 1]];
            if ((hi | lo) < 0) {
                bad = 1;
                break;
            }
            *w++ = (uint8_t)(hi << 4 | lo);
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    PyBuffer_Release(&offs);
    PyBuffer_Release(&out);
    if (bad == 2) {
        PyErr_SetString(PyExc_ValueError, "hll kernel: hex rows do not fit their buffers");
        return NULL;
    }
    return PyLong_FromLong(bad ? -1 : 0);
}

static PyMethodDef methods[] = {
    {"union_groups", union_groups, METH_VARARGS,
     "Union the register sets of groups of hll rows: sums, zero counts, union bytes."},
    {"unhex_rows", unhex_rows, METH_VARARGS, "Decode rows of \\x hex text into one buffer."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernel",
                                    "Compiled grouped hll union (see _kernel.c).", -1, methods};

PyMODINIT_FUNC PyInit__kernel(void) {
    PyObject *mod = PyModule_Create(&module);
    if (mod && PyModule_AddIntConstant(mod, "VERSION", KERNEL_VERSION) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
