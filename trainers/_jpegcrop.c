/*
 * Region-of-interest JPEG decode with libjpeg-turbo (the fused decode-and-crop that
 * tf.image.decode_and_crop_jpeg and DALI's ROI decoders do).
 *
 * For a crop box it decodes, at a DCT scale of 1/scale_denom:
 *   - rows above the box: entropy-decoded only (jpeg_skip_scanlines skips the IDCT,
 *     upsampling and colour conversion);
 *   - rows in the box: only the iMCU columns that cover it (jpeg_crop_scanline);
 *   - rows below the box: not read at all (jpeg_abort_decompress).
 *
 * Two decode modes:
 *   - fast (exact=0, the training default): JDCT_IFAST and no fancy upsampling, the
 *     settings of the whole-image path in trainers/preprocess.py (simplejpeg with
 *     fastdct=True, fastupsample=True), so the crop equals the same box cut from a
 *     whole-image decode.
 *   - exact (exact=1): JDCT_ISLOW and fancy (triangle-filter) chroma upsampling,
 *     libjpeg's defaults and tf.image.decode_and_crop_jpeg's upsampling (simplejpeg
 *     with fastdct=False, fastupsample=False; Pillow). Fancy upsampling reads the chroma
 *     sample on each side of a pixel, and jpeg_crop_scanline makes the decoded column
 *     range the whole image as far as the upsampler is concerned (its edges are
 *     replicated; and for a chroma row of 2 samples or fewer libjpeg falls back to
 *     plain upsampling), so the caller widens the window by one pixel on each side
 *     where the image goes on, and to at least 8 pixels (trainers/preprocess.py
 *     does): the box inside is then the box of the whole-image decode, bit for bit
 *     (tested). Rows need nothing: libjpeg decodes the context rows above and below
 *     itself.
 *
 * Python API (module trainers._jpegcrop):
 *   decode_crop(data, top, left, height, width, scale_denom, exact=0)
 *       -> (pixels: bytes, out_height, out_width, x_offset)
 *   data: a bytes-like JPEG. The box is in *scaled* output pixels (after 1/scale_denom).
 *   exact: 0 for the fast mode, nonzero for the exact mode (see above).
 *   pixels holds out_height x out_width x 3 RGB uint8 rows; out_height == height.
 *   out_width >= width because the columns are widened to iMCU boundaries; the box
 *   starts x_offset columns into each row.
 *   Raises ValueError with libjpeg's message for anything libjpeg rejects (CMYK/YCCK,
 *   arithmetic coding, PNG bytes, truncation is a warning in libjpeg and is raised too).
 *   The GIL is released while libjpeg runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
} error_mgr;

static void on_error(j_common_ptr cinfo) {
    error_mgr *err = (error_mgr *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

/* Corrupt-data warnings (premature end of data, extraneous bytes ...) are errors here:
 * a truncated image must be reported, not decoded into grey rows. */
static void on_message(j_common_ptr cinfo, int msg_level) {
    if (msg_level < 0) {
        on_error(cinfo);
    }
}

static PyObject *decode_crop(PyObject *self, PyObject *args) {
    Py_buffer src;
    int top, left, height, width, denom, exact = 0;
    if (!PyArg_ParseTuple(args, "y*iiiii|p", &src, &top, &left, &height, &width, &denom,
                          &exact)) {
        return NULL;
    }
    if (denom != 1 && denom != 2 && denom != 4 && denom != 8) {
        PyBuffer_Release(&src);
        return PyErr_Format(PyExc_ValueError, "scale_denom (%d) must be 1, 2, 4 or 8", denom);
    }
    if (top < 0 || left < 0 || height <= 0 || width <= 0) {
        PyBuffer_Release(&src);
        return PyErr_Format(PyExc_ValueError, "bad crop box top=%d left=%d height=%d width=%d",
                            top, left, height, width);
    }

    struct jpeg_decompress_struct cinfo;
    error_mgr err;
    PyObject *volatile out = NULL;
    JDIMENSION xoff = 0, cw = 0;
    volatile int stage = 0; /* 0 before create, 1 created */
    const char *box_error = NULL;
    PyThreadState *volatile ts = PyEval_SaveThread();

    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;
    err.message[0] = '\0';
    if (setjmp(err.jump)) {
        if (stage) jpeg_destroy_decompress(&cinfo);
        if (ts != NULL) PyEval_RestoreThread(ts); /* libjpeg only runs without the GIL */
        PyBuffer_Release(&src);
        Py_XDECREF(out);
        return PyErr_Format(PyExc_ValueError, "libjpeg: %s", err.message);
    }
    jpeg_create_decompress(&cinfo);
    stage = 1;
    jpeg_mem_src(&cinfo, (const unsigned char *)src.buf, (unsigned long)src.len);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
        strcpy(err.message, "CMYK/YCCK JPEG (not decoded here)");
        longjmp(err.jump, 1);
    }
    cinfo.out_color_space = JCS_RGB;
    cinfo.scale_num = 1;
    cinfo.scale_denom = (unsigned int)denom;
    cinfo.dct_method = exact ? JDCT_ISLOW : JDCT_IFAST;
    cinfo.do_fancy_upsampling = exact ? TRUE : FALSE;
    jpeg_start_decompress(&cinfo);

    if ((JDIMENSION)(top + height) > cinfo.output_height ||
        (JDIMENSION)(left + width) > cinfo.output_width) {
        box_error = "crop box outside the scaled image";
    } else {
        xoff = (JDIMENSION)left;
        cw = (JDIMENSION)width;
        if (cw < cinfo.output_width) {
            jpeg_crop_scanline(&cinfo, &xoff, &cw);
        } else {
            xoff = 0;
            cw = cinfo.output_width;
        }
    }
    if (box_error) {
        unsigned int oh = cinfo.output_height, ow = cinfo.output_width;
        jpeg_destroy_decompress(&cinfo);
        PyEval_RestoreThread(ts);
        PyBuffer_Release(&src);
        return PyErr_Format(PyExc_ValueError,
                            "%s: top=%d left=%d height=%d width=%d, scaled image %ux%u",
                            box_error, top, left, height, width, ow, oh);
    }

    /* Allocate the output with the GIL held, then go back to libjpeg without it. */
    PyEval_RestoreThread(ts);
    ts = NULL;
    Py_ssize_t row_bytes = (Py_ssize_t)cw * 3;
    out = PyBytes_FromStringAndSize(NULL, row_bytes * height);
    if (out == NULL) {
        jpeg_destroy_decompress(&cinfo);
        PyBuffer_Release(&src);
        return NULL;
    }
    unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(out);
    ts = PyEval_SaveThread();

    if (top > 0) {
        JDIMENSION skipped = jpeg_skip_scanlines(&cinfo, (JDIMENSION)top);
        if (skipped != (JDIMENSION)top) {
            strcpy(err.message, "could not skip to the crop's first row");
            longjmp(err.jump, 1);
        }
    }
    JSAMPROW rows[16];
    int done = 0;
    while (done < height) {
        int n = height - done < 16 ? height - done : 16;
        for (int i = 0; i < n; i++) rows[i] = dst + (Py_ssize_t)(done + i) * row_bytes;
        JDIMENSION got = jpeg_read_scanlines(&cinfo, rows, (JDIMENSION)n);
        if (got == 0) {
            strcpy(err.message, "no more scanlines (truncated image)");
            longjmp(err.jump, 1);
        }
        done += (int)got;
    }
    jpeg_abort_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    PyEval_RestoreThread(ts);
    PyBuffer_Release(&src);
    PyObject *result = Py_BuildValue("(Oiii)", out, height, (int)cw, left - (int)xoff);
    Py_DECREF(out);
    return result;
}

static PyMethodDef methods[] = {
    {"decode_crop", decode_crop, METH_VARARGS,
     "decode_crop(data, top, left, height, width, scale_denom, exact=0) -> "
     "(pixels, out_height, out_width, x_offset); exact: ISLOW + fancy upsampling "
     "instead of IFAST + plain; see trainers/_jpegcrop.c."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jpegcrop",
    "Region-of-interest JPEG decode with libjpeg-turbo (jpeg_crop_scanline + "
    "jpeg_skip_scanlines).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__jpegcrop(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    PyModule_AddIntConstant(m, "LIBJPEG_VERSION", JPEG_LIB_VERSION);
#ifdef LIBJPEG_TURBO_VERSION_NUMBER
    PyModule_AddIntConstant(m, "LIBJPEG_TURBO_VERSION", LIBJPEG_TURBO_VERSION_NUMBER);
#endif
    return m;
}
