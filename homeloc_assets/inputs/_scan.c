/*
 * One pass over a batch's bytes: line bounds and the line-level facts the reader checks
 * (``reader._prescan``), for ``reader._scan_lines``.
 *
 * Why compiled: the numpy reference (``reader._scan_lines_numpy``) makes five passes over
 * the buffer (newlines, commas, carriage returns, bytes >= 0x80, then searchsorted of
 * each against the line starts); on the real data's 2.5 GB that was about a third of
 * reading a batch. Same results, tested against it (homeloc_tests/test_inputs_scan.py).
 *
 * Per line i (lines end at '\n'; a last line without one ends at the buffer's end;
 * a buffer ending with '\n' has no empty line after it):
 *   starts[i]   first byte;  raw_end[i] one past its '\n' (or the buffer's end);
 *   ends[i]     end of the content: before the '\n' and one '\r' before it;
 *   commas[i]   ',' in [starts[i], raw_end[i]);
 *   flags[i]    1: a '\r' in [starts[i], ends[i]);  2: a byte >= 0x80 in the line.
 * The GIL is released during the scan.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define SCAN_VERSION 2

/* scan_lines(buf, starts, ends, raw_end, commas, flags) -> number of lines, -1 when the
 * output arrays have room for fewer */
static PyObject *scan_lines(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer data, b_starts, b_ends, b_raw, b_commas, b_flags;
    if (!PyArg_ParseTuple(args, "y*w*w*w*w*w*", &data, &b_starts, &b_ends, &b_raw, &b_commas,
                          &b_flags))
        return NULL;
    const uint8_t *buf = data.buf;
    const int64_t n = data.len;
    const int64_t cap = b_starts.len / 8;
    int64_t *starts = b_starts.buf, *ends = b_ends.buf, *raw = b_raw.buf;
    int32_t *commas = b_commas.buf;
    uint8_t *flags = b_flags.buf;
    int64_t lines = 0;
    int too_small = b_ends.len / 8 < cap || b_raw.len / 8 < cap || b_commas.len / 4 < cap ||
                    b_flags.len < cap;

    Py_BEGIN_ALLOW_THREADS
    int64_t start = 0;
    while (!too_small && start < n) {
        if (lines >= cap) {
            too_small = 1;
            break;
        }
        const uint8_t *nl = memchr(buf + start, '\n', (size_t)(n - start));
        int64_t end = nl ? nl - buf : n;
        int64_t raw_end = nl ? end + 1 : n;
        int32_t c = 0;
        uint8_t f = 0;
        for (int64_t k = start; k < end; k++) {
            uint8_t ch = buf[k];
            c += ch == ',';
            f |= (ch >= 0x80) << 1;
        }
        int64_t content_end = (end > start && buf[end - 1] == '\r') ? end - 1 : end;
        if (memchr(buf + start, '\r', (size_t)(content_end - start))) f |= 1;
        starts[lines] = start;
        ends[lines] = content_end;
        raw[lines] = raw_end;
        commas[lines] = c;
        flags[lines] = f;
        lines++;
        start = raw_end;
    }
    Py_END_ALLOW_THREADS

    PyBuffer_Release(&data);
    PyBuffer_Release(&b_starts);
    PyBuffer_Release(&b_ends);
    PyBuffer_Release(&b_raw);
    PyBuffer_Release(&b_commas);
    PyBuffer_Release(&b_flags);
    if (too_small) /* the caller sizes the arrays again for every line: -1 */
        return PyLong_FromLongLong(-1);
    return PyLong_FromLongLong(lines);
}

static PyMethodDef methods[] = {
    {"scan_lines", scan_lines, METH_VARARGS, "Line bounds, commas and flags of a buffer."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scan",
                                    "Compiled line scan of the CSV reader (see _scan.c).", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__scan(void) {
    PyObject *mod = PyModule_Create(&module);
    if (mod && PyModule_AddIntConstant(mod, "VERSION", SCAN_VERSION) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
