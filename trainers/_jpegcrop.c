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
 *
 *   check(data) -> (height, width, components)
 *   The integrity check of the pack (trainers/pack.py): whether a whole-image decode to
 *   RGB would succeed, without the pixels. What can fail in a decode is found in the
 *   marker parsing and the entropy (Huffman) decoding, plus the set-up of the colour
 *   conversion and upsampling; the IDCT, upsampling and colour conversion themselves
 *   cannot fail. So this reads the header, refuses what the decoders here do not turn
 *   into RGB, and entropy-decodes every scan to DCT coefficients (jpeg_read_coefficients,
 *   what jpegtran does; progressive files included) up to the EOI marker
 *   (jpeg_finish_decompress), with libjpeg's corrupt-data warnings raised as errors.
 *   Refused besides what libjpeg rejects (each with a one-line reason):
 *     - colour spaces other than greyscale (1 component), YCbCr or RGB (3 components):
 *       CMYK/YCCK (simplejpeg converts them itself, but decode_crop above does not) and
 *       unknown component counts;
 *     - chroma subsamplings that libjpeg-turbo's TurboJPEG API (simplejpeg) cannot
 *       name (see known_subsampling below); they include the fractional ratios that
 *       libjpeg's upsampler refuses in jpeg_start_decompress (JERR_FRACT_SAMPLE_NOTIMPL),
 *       which jpeg_read_coefficients never reaches.
 *   Bytes after the EOI marker are not read (as in a decode). height and width in
 *   pixels; components 1 or 3. Raises ValueError with the reason ("libjpeg: ..." for
 *   libjpeg's own message). The GIL is released while libjpeg runs.
 *
 *   pack_files(members, start, max_count, ahead, max_batch_bytes, suffixes, max_bytes,
 *              max_pixels) -> (records, image_bytes)
 *   The pack's loop over files stored as they are (trainers/pack.py _write_members),
 *   one call per batch: for members[start:], a list of (path: str, label: int) pairs,
 *   until max_count members or until the images so far reach max_batch_bytes, each
 *   file is opened, fstat'ed, read and checked (check above) and its record
 *   serialized, without the GIL around the system calls and libjpeg. Each file is
 *   opened `ahead` members (at most 63) before its turn, with the kernel asked to read
 *   it in the background (posix_fadvise WILLNEED), so that reads of files not in the
 *   page cache overlap the checks; the descriptor is the one then read. The file is
 *   read straight into its place in the record, so its bytes are copied once (by the
 *   kernel). A record is the serialized tf.train.Example of trainers/pack.py
 *   example_record(data, label, file name), byte for byte (tested); records[i] is
 *   members[start + i]'s, or None, having raised nothing, for anything but: a valid
 *   UTF-8 path without NUL whose file name is an image's by its name (suffixes: the
 *   lower-case suffixes of trainers/scan.py IMAGE_SUFFIXES; not starting with '.'),
 *   a label 0 <= label < 2**63, a regular file of 1..max_bytes bytes, read whole,
 *   starting with a JPEG marker (FF D8 FF), of at most max_pixels pixels (0: no
 *   limit) and passing the check. The caller then takes its general path for that
 *   member, which names the reason or converts the file. image_bytes: the sum of the
 *   sizes of the files whose record was made (bytes). At least one member is taken
 *   when start < len(members); no descriptor stays open after the call. Raises
 *   MemoryError, TypeError for bad arguments, ValueError for start outside
 *   0..len(members), max_count < 1, or suffixes that are more than 32 or not all str.
 *
 *   example_image_label(record) -> (image_start, image_end, label) or None
 *   trainers/example_wire.py image_and_label's walk of a serialized tf.train.Example
 *   in C (byte offsets of the image's bytes in record, and the int64 label), with the
 *   same result on every record it accepts (tested against the Python walker on
 *   valid, damaged and foreign records). None for anything unusual (a malformed field,
 *   a varint over 64 bits, no image or label): the Python walker then gives the error.
 *
 *   prefetch(path) -> None
 *   Opens path and asks the kernel to read the whole file into the page cache in the
 *   background (posix_fadvise POSIX_FADV_WILLNEED), without the GIL; any error (a
 *   missing file, a folder) is ignored. The pack's general path (files pack_files
 *   does not take: resized ones) calls it a few members ahead of the one it checks,
 *   so that the reads of files not in the page cache overlap the checks instead of
 *   stopping the worker. Raises only TypeError / ValueError for a
 *   path that is not one (an embedded NUL).
 *
 *   list_folder(path) -> (names: list[str], dirs: bytes) or None
 *   One folder's entries for trainers/scan.py runs_below, without an os.DirEntry each:
 *   their names ("." and ".." left out) sorted by their bytes, which for valid UTF-8 is
 *   Python's str order, and dirs[i] 1 when names[i] is a folder as os.DirEntry.is_dir()
 *   says (links followed: the entry's type from readdir, else a stat; 0 when the stat
 *   fails). None, having raised nothing, when a name is not valid UTF-8 (the caller
 *   then lists the folder with os.scandir, whose str order differs for such names).
 *   Raises OSError (errno and path) when the folder cannot be opened or read,
 *   MemoryError.
 *
 *   stat_lines(pairs) -> bytes or None
 *   trainers/pack.py _stat_lines in C: for each (path: str, label: int) of the
 *   iterable pairs, "path NUL label NUL size NUL mtime_ns\n" (stat, links followed) or
 *   "path NUL label NUL missing\n" when stat fails, UTF-8, byte for byte the Python
 *   function's lines (tested). Each file is stat'ed relative to its folder (fstatat on
 *   a descriptor kept while consecutive paths share the folder), which spares the
 *   kernel the walk of the whole path. None, having raised nothing, for anything the
 *   Python function handles differently (a path that is not valid UTF-8 or holds a
 *   NUL, a label that is not an int, an item that is not a pair): the caller then
 *   runs the Python function, which gives its result or error. Raises MemoryError and
 *   what iterating pairs raises.
 */
#define _GNU_SOURCE /* memrchr */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* Errors and corrupt-data warnings of cinfo longjmp to err->jump with the message. */
static void use_error_mgr(struct jpeg_decompress_struct *cinfo, error_mgr *err) {
    cinfo->err = jpeg_std_error(&err->pub);
    err->pub.error_exit = on_error;
    err->pub.emit_message = on_message;
    err->message[0] = '\0';
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

    use_error_mgr(&cinfo, &err);
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

/* Luma sampling factors (h, v) of the subsamplings TurboJPEG names when both chroma
 * components are sampled 1x1: 4:4:4, 4:2:2, 4:2:0, 4:4:0, 4:1:1, 4:4:1. */
static const int luma_over_chroma[][2] = {{1, 1}, {2, 1}, {2, 2}, {1, 2}, {4, 1}, {1, 4}};

/* Whether libjpeg-turbo's TurboJPEG API (what simplejpeg decodes with) determines the
 * chroma subsampling of a 3-component header: chroma sampled 1x1 with luma as in
 * luma_over_chroma; 4:2:2 or 4:4:0 written as luma 2x2 over chroma 1x2 or 2x1; or all
 * three components sampled alike with at most 3 blocks each (4:4:4 again). TurboJPEG
 * refuses anything else ("Could not determine subsampling level of JPEG image", the
 * classification in libjpeg-turbo 3.1's src/turbojpeg.c), whatever libjpeg itself
 * could decode; fractional ratios (3x1 over 2x1), which libjpeg's upsampler refuses
 * (JERR_FRACT_SAMPLE_NOTIMPL), are among them. */
static int known_subsampling(const struct jpeg_decompress_struct *cinfo) {
    const jpeg_component_info *comp = cinfo->comp_info;
    int h = comp[0].h_samp_factor, v = comp[0].v_samp_factor;
    int ones = 1, same = 1, as422 = 1, as440 = 1;
    for (int c = 1; c < 3; c++) {
        int ch = comp[c].h_samp_factor, cv = comp[c].v_samp_factor;
        ones &= ch == 1 && cv == 1;
        same &= ch == h && cv == v;
        as422 &= ch == 1 && cv == 2;
        as440 &= ch == 2 && cv == 1;
    }
    if (ones) {
        for (size_t i = 0; i < sizeof luma_over_chroma / sizeof luma_over_chroma[0]; i++) {
            if (h == luma_over_chroma[i][0] && v == luma_over_chroma[i][1]) return 1;
        }
    }
    if (h == 2 && v == 2 && (as422 || as440)) return 1;
    return same && h * v <= D_MAX_BLOCKS_IN_MCU / 3;
}

/* The reason a header that libjpeg read is not decoded to RGB the way the readers of
 * this project decode (see check above), written into msg; 0 when it is. */
static int refuse_header(const struct jpeg_decompress_struct *cinfo, char *msg, size_t size) {
    int nc = cinfo->num_components;
    J_COLOR_SPACE cs = cinfo->jpeg_color_space;
    if (!((cs == JCS_GRAYSCALE && nc == 1) ||
          ((cs == JCS_YCbCr || cs == JCS_RGB) && nc == 3))) {
        const char *name = cs == JCS_CMYK ? "CMYK" : cs == JCS_YCCK ? "YCCK"
                           : cs == JCS_GRAYSCALE ? "greyscale" : cs == JCS_YCbCr ? "YCbCr"
                           : cs == JCS_RGB ? "RGB" : "unknown";
        snprintf(msg, size, "%s colour space with %d components (only greyscale, YCbCr "
                 "and RGB JPEGs are kept as they are)", name, nc);
        return 1;
    }
    if (nc == 3 && !known_subsampling(cinfo)) {
        const jpeg_component_info *comp = cinfo->comp_info;
        snprintf(msg, size, "unusual chroma subsampling (components sampled %dx%d, %dx%d, "
                 "%dx%d): not decoded by libjpeg-turbo's TurboJPEG API", comp[0].h_samp_factor,
                 comp[0].v_samp_factor, comp[1].h_samp_factor, comp[1].v_samp_factor,
                 comp[2].h_samp_factor, comp[2].v_samp_factor);
        return 1;
    }
    return 0;
}

/* What check_jpeg found: the header's size and components, or why it refused. */
typedef struct {
    int height, width, components;
    const char *prefix; /* "libjpeg: " before libjpeg's own messages, "" before ours */
    char message[JMSG_LENGTH_MAX];
} check_result;

/* The integrity check of check() below on len bytes at buf, without the GIL: 0 when
 * the JPEG is kept as it is; 1 when refused (r->prefix + r->message say why); 2 when
 * its header gives more than max_pixels pixels (0: no limit), found before any scan
 * is decoded (no coefficient buffer of an absurd size is allocated). */
static int check_jpeg(const unsigned char *buf, unsigned long len,
                      unsigned long long max_pixels, check_result *r) {
    struct jpeg_decompress_struct cinfo;
    error_mgr err;
    volatile int stage = 0; /* 0 before create, 1 created */

    r->prefix = "libjpeg: ";
    use_error_mgr(&cinfo, &err);
    if (setjmp(err.jump)) {
        if (stage) jpeg_destroy_decompress(&cinfo);
        memcpy(r->message, err.message, sizeof r->message);
        return 1;
    }
    jpeg_create_decompress(&cinfo);
    stage = 1;
    jpeg_mem_src(&cinfo, buf, len);
    jpeg_read_header(&cinfo, TRUE);
    r->height = (int)cinfo.image_height;
    r->width = (int)cinfo.image_width;
    r->components = cinfo.num_components;
    if (max_pixels && (unsigned long long)cinfo.image_height * cinfo.image_width > max_pixels) {
        jpeg_destroy_decompress(&cinfo);
        return 2;
    }
    if (refuse_header(&cinfo, err.message, sizeof err.message)) {
        r->prefix = "";
        longjmp(err.jump, 1);
    }
    jpeg_read_coefficients(&cinfo); /* every scan, entropy-decoded */
    jpeg_finish_decompress(&cinfo); /* reads up to the EOI marker */
    jpeg_destroy_decompress(&cinfo);
    return 0;
}

static PyObject *check(PyObject *self, PyObject *args) {
    Py_buffer src;
    if (!PyArg_ParseTuple(args, "y*", &src)) {
        return NULL;
    }
    check_result r;
    PyThreadState *ts = PyEval_SaveThread();
    int refused = check_jpeg((const unsigned char *)src.buf, (unsigned long)src.len, 0, &r);
    PyEval_RestoreThread(ts);
    PyBuffer_Release(&src);
    if (refused) {
        return PyErr_Format(PyExc_ValueError, "%s%s", r.prefix, r.message);
    }
    return Py_BuildValue("(iii)", r.height, r.width, r.components);
}

/* n as a protobuf varint at out (7 bits a byte, low bits first); returns its length. */
static size_t put_varint(unsigned char *out, unsigned long long n) {
    size_t i = 0;
    while (n >= 128) {
        out[i++] = (unsigned char)(n & 0x7F) | 0x80;
        n >>= 7;
    }
    out[i++] = (unsigned char)n;
    return i;
}

static size_t varint_len(unsigned long long n) {
    size_t i = 1;
    while (n >= 128) {
        n >>= 7;
        i++;
    }
    return i;
}

/* The image map entry's key and the tag of its value (trainers/pack.py _KEY_IMAGE). */
static const unsigned char key_image[] = {0x0a, 0x05, 'i', 'm', 'a', 'g', 'e', 0x12};

/* read() of a regular file into buf until EOF or cap bytes; -1 on an error. */
static Py_ssize_t read_all(int fd, unsigned char *buf, Py_ssize_t cap) {
    Py_ssize_t got = 0;
    while (got < cap) {
        ssize_t n = read(fd, buf + got, (size_t)(cap - got));
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (n == 0) break;
        got += n;
    }
    return got;
}

/* The protobuf varint at buf[*i:end] into *value; 0 when it runs past end or does not
 * fit 64 bits (the caller then leaves the record to the Python walker). */
static int wire_varint(const unsigned char *buf, Py_ssize_t *i, Py_ssize_t end,
                       unsigned long long *value) {
    unsigned long long v = 0;
    for (int shift = 0; shift <= 63; shift += 7) {
        if (*i >= end) return 0;
        unsigned char b = buf[(*i)++];
        if (shift == 63 && (b & 0x7E)) return 0; /* bits past 64 */
        v |= (unsigned long long)(b & 0x7F) << shift;
        if (b < 0x80) {
            *value = v;
            return 1;
        }
    }
    return 0;
}

/* One field of the message ending at end, from *i: its number, wire type and value
 * span (for a varint, the varint's bytes); fixed32/64 fields are skipped as by the
 * Python walker (*i moves past them, maybe past end). 0: a malformed field. */
static int wire_field(const unsigned char *buf, Py_ssize_t *i, Py_ssize_t end,
                      unsigned long long *field, int *wire, Py_ssize_t *s, Py_ssize_t *e) {
    unsigned long long key, n;
    if (!wire_varint(buf, i, end, &key)) return 0;
    *field = key >> 3;
    *wire = (int)(key & 7);
    if (*wire == 2) {
        if (!wire_varint(buf, i, end, &n) || n > (unsigned long long)(end - *i)) return 0;
        *s = *i;
        *e = *i + (Py_ssize_t)n;
        *i = *e;
        return 1;
    }
    if (*wire == 0) {
        *s = *i;
        if (!wire_varint(buf, i, end, &n)) return 0;
        *e = *i;
        return 1;
    }
    if (*wire == 1 || *wire == 5) {
        *i += *wire == 1 ? 8 : 4;
        *s = *e = -1; /* skipped */
        return 1;
    }
    return 0;
}

/* The first field `number` of wire type `want` (-1: a varint or a length-delimited
 * one) in buf[start:end] (trainers/example_wire.py _first); 0 when none or a field
 * before it is malformed. */
static int wire_first(const unsigned char *buf, Py_ssize_t start, Py_ssize_t end,
                      unsigned long long number, int want, Py_ssize_t *s, Py_ssize_t *e) {
    Py_ssize_t i = start;
    while (i < end) {
        unsigned long long field;
        int wire;
        if (!wire_field(buf, &i, end, &field, &wire, s, e)) return 0;
        if (*s >= 0 && field == number && (want < 0 || wire == want)) return 1;
    }
    return 0;
}

static PyObject *example_image_label(PyObject *self, PyObject *args) {
    Py_buffer src;
    if (!PyArg_ParseTuple(args, "y*", &src)) {
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)src.buf;
    Py_ssize_t len = src.len, fs, fe, i, s, e, ks, ke, vs, ve, ls, le, image_s = -1, image_e = -1;
    long long label = 0;
    int have_label = 0, ok = 0;
    if (!wire_first(buf, 0, len, 1, 2, &fs, &fe)) goto done; /* Example.features */
    i = fs;
    while (i < fe) { /* Features.feature map entries, every one walked */
        unsigned long long field;
        int wire;
        if (!wire_field(buf, &i, fe, &field, &wire, &s, &e)) goto done;
        if (s < 0 || field != 1 || wire != 2) continue;
        if (!wire_first(buf, s, e, 1, 2, &ks, &ke)) goto done;
        if (ke - ks == 5 && memcmp(buf + ks, "image", 5) == 0) {
            if (!wire_first(buf, s, e, 2, 2, &vs, &ve) ||
                !wire_first(buf, vs, ve, 1, 2, &ls, &le) ||
                !wire_first(buf, ls, le, 1, 2, &image_s, &image_e)) goto done;
        } else if (ke - ks == 5 && memcmp(buf + ks, "label", 5) == 0) {
            /* Int64List: the first field 1, packed (its first varint) or not. */
            Py_ssize_t a, b;
            unsigned long long v;
            if (!wire_first(buf, s, e, 2, 2, &vs, &ve) ||
                !wire_first(buf, vs, ve, 3, 2, &ls, &le) ||
                !wire_first(buf, ls, le, 1, -1, &a, &b) || !wire_varint(buf, &a, b, &v))
                goto done;
            label = (long long)v; /* two's complement: the int64 */
            have_label = 1;
        }
    }
    if (i != fe) goto done; /* ends inside a field */
    ok = image_s >= 0 && have_label;
done:
    PyBuffer_Release(&src);
    if (!ok) Py_RETURN_NONE;
    return Py_BuildValue("(nnL)", image_s, image_e, label);
}

static PyObject *prefetch(PyObject *self, PyObject *args) {
    PyObject *path = NULL;
    if (!PyArg_ParseTuple(args, "O&", PyUnicode_FSConverter, &path)) return NULL;
    const char *cpath = PyBytes_AS_STRING(path);
    Py_BEGIN_ALLOW_THREADS
    int fd = open(cpath, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0) {
        (void)posix_fadvise(fd, 0, 0, POSIX_FADV_WILLNEED);
        close(fd);
    }
    Py_END_ALLOW_THREADS
    Py_DECREF(path);
    Py_RETURN_NONE;
}

/* --- pack_files: the pack's per-member loop for files kept as they are ------------ */

/* Members opened ahead of the one being read, at most (pack_files' ring of fds). */
#define AHEAD_MAX 64

/* The part of a file-name map entry or a label map entry before its payload; see
 * trainers/pack.py _name_entry and _label_entry, which these follow byte for byte. */
static const unsigned char key_file_name[] = {0x0a, 0x09, 'f', 'i', 'l', 'e', '_', 'n',
                                              'a', 'm', 'e', 0x12};
static const unsigned char key_label[] = {0x0a, 0x05, 'l', 'a', 'b', 'e', 'l'};

/* trainers/pack.py _name_entry(name) at out (room: 32 + n); returns its length. */
static size_t put_name_entry(unsigned char *out, const char *name, size_t n) {
    unsigned char a[10], b[10], c[10];
    size_t la = put_varint(a, n);
    size_t lb = put_varint(b, n + 1 + la);
    size_t lc = put_varint(c, n + 2 + la + lb);
    size_t head = sizeof key_file_name + lc + 1 + lb + 1 + la + n;
    size_t i = 0;
    out[i++] = 0x0a;
    i += put_varint(out + i, head);
    memcpy(out + i, key_file_name, sizeof key_file_name);
    i += sizeof key_file_name;
    memcpy(out + i, c, lc);
    i += lc;
    out[i++] = 0x0a;
    memcpy(out + i, b, lb);
    i += lb;
    out[i++] = 0x0a;
    memcpy(out + i, a, la);
    i += la;
    memcpy(out + i, name, n);
    return i + n;
}

/* trainers/pack.py _label_entry(label) (label >= 0) at out (room: 32); its length. */
static size_t put_label_entry(unsigned char *out, unsigned long long label) {
    unsigned char v[10];
    size_t lv = put_varint(v, label), i = 0;
    /* 0a L | 0a 05 "label" | 12 L | 1a L | 0a L | varint: every length under 128 */
    out[i++] = 0x0a;
    out[i++] = (unsigned char)(sizeof key_label + 6 + lv);
    memcpy(out + i, key_label, sizeof key_label);
    i += sizeof key_label;
    out[i++] = 0x12;
    out[i++] = (unsigned char)(4 + lv);
    out[i++] = 0x1a;
    out[i++] = (unsigned char)(2 + lv);
    out[i++] = 0x0a;
    out[i++] = (unsigned char)lv;
    memcpy(out + i, v, lv);
    return i + lv;
}

/* The image suffixes of one pack_files call, resolved to UTF-8 once. */
#define SUFFIX_MAX 32
typedef struct {
    int n;
    const char *s[SUFFIX_MAX];
    size_t len[SUFFIX_MAX];
} suffix_set;

/* suffixes (a tuple of lower-case str) into *out; -1 with ValueError for more than
 * SUFFIX_MAX of them or one that is not a str (or not encodable). */
static int get_suffixes(PyObject *suffixes, suffix_set *out) {
    Py_ssize_t k = PyTuple_GET_SIZE(suffixes);
    if (k > SUFFIX_MAX) {
        PyErr_Format(PyExc_ValueError, "pack_files: %zd suffixes, at most %d", k, SUFFIX_MAX);
        return -1;
    }
    out->n = 0;
    for (Py_ssize_t j = 0; j < k; j++) {
        PyObject *u = PyTuple_GET_ITEM(suffixes, j);
        Py_ssize_t ls;
        const char *s = PyUnicode_Check(u) ? PyUnicode_AsUTF8AndSize(u, &ls) : NULL;
        if (s == NULL) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "pack_files: suffix %zd is not a UTF-8 str", j);
            return -1;
        }
        out->s[out->n] = s;
        out->len[out->n++] = (size_t)ls;
    }
    return 0;
}

/* Whether name (UTF-8, n bytes, no '/') is an image file by its name for
 * trainers/scan.py not_an_image: not starting with '.', and its suffix
 * (os.path.splitext) in suffixes once ASCII letters are lowered. 0 for a suffix with
 * other bytes than ASCII: left to that function. */
static int image_name(const char *name, size_t n, const suffix_set *suffixes) {
    if (n == 0 || name[0] == '.') return 0;
    const char *dot = memrchr(name, '.', n);
    if (dot == NULL) return 0;
    size_t m = n - (size_t)(dot - name);
    char low[16];
    if (m >= sizeof low) return 0;
    for (size_t i = 0; i < m; i++) {
        unsigned char ch = (unsigned char)dot[i];
        if (ch >= 0x80) return 0;
        low[i] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
    }
    for (int j = 0; j < suffixes->n; j++) {
        if (suffixes->len[j] == m && memcmp(suffixes->s[j], low, m) == 0) return 1;
    }
    return 0;
}

/* A member of pack_files' list: its path as UTF-8 (borrowed from the str), its
 * file name's offset in it, its label; 0 when the member is left to the caller's
 * general path (not a (str, int) pair, a path that is not valid UTF-8 or holds a
 * NUL, not an image by its name, a negative or huge label). */
typedef struct {
    const char *path;
    Py_ssize_t len, name;
    unsigned long long label;
} member;

static int get_member(PyObject *members, Py_ssize_t k, const suffix_set *suffixes,
                      member *m) {
    PyObject *item = PyList_GET_ITEM(members, k);
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) return 0;
    PyObject *key = PyTuple_GET_ITEM(item, 0), *label = PyTuple_GET_ITEM(item, 1);
    if (!PyUnicode_Check(key) || !PyLong_Check(label)) return 0;
    m->path = PyUnicode_AsUTF8AndSize(key, &m->len);
    if (m->path == NULL || (Py_ssize_t)strlen(m->path) != m->len) {
        PyErr_Clear();
        return 0;
    }
    const char *slash = memrchr(m->path, '/', (size_t)m->len);
    m->name = slash == NULL ? 0 : slash - m->path + 1;
    if (!image_name(m->path + m->name, (size_t)(m->len - m->name), suffixes)) return 0;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(label, &overflow);
    if (overflow || v < 0) {
        PyErr_Clear();
        return 0;
    }
    m->label = (unsigned long long)v;
    return 1;
}

/* open() of a member's file, with the kernel asked to read it all in the background
 * (posix_fadvise WILLNEED), without the GIL; -1 when it cannot be opened. */
static int open_ahead(const char *path) {
    int fd;
    Py_BEGIN_ALLOW_THREADS
    fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0) (void)posix_fadvise(fd, 0, 0, POSIX_FADV_WILLNEED);
    Py_END_ALLOW_THREADS
    return fd;
}

/* One member's record from its open file fd (closed here), or NULL with no error
 * set when it is left to the general path, or NULL with MemoryError. *size: the
 * file's size. */
static PyObject *pack_member(int fd, const member *m, long long max_bytes,
                             unsigned long long max_pixels, unsigned long long *size) {
    struct stat st;
    int stat_ok;
    Py_BEGIN_ALLOW_THREADS
    stat_ok = fstat(fd, &st) == 0;
    Py_END_ALLOW_THREADS
    if (!stat_ok || !S_ISREG(st.st_mode) || st.st_size <= 0 || st.st_size > max_bytes) {
        close(fd);
        return NULL;
    }
    unsigned char head[64 + 10], tail[32];
    size_t n = (size_t)(m->len - m->name);
    unsigned char *name_entry = n + 32 <= 64 ? head : PyMem_Malloc(n + 32);
    if (name_entry == NULL) {
        close(fd);
        return PyErr_NoMemory();
    }
    size_t lh = put_name_entry(name_entry, m->path + m->name, n);
    size_t lt = put_label_entry(tail, m->label);
    /* The layout of trainers/pack.py example_record:
     *   0a L(total) | name entry | 0a L(entry) key_image L(feature) 0a L(list) 0a L(size) image
     *   | label entry */
    unsigned long long sz = (unsigned long long)st.st_size;
    unsigned long long list = sz + 1 + varint_len(sz);
    unsigned long long feature = list + 1 + varint_len(list);
    unsigned long long entry = sizeof key_image + varint_len(feature) + feature;
    unsigned long long total = lh + 1 + varint_len(entry) + entry + lt;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(1 + varint_len(total) + total));
    if (out == NULL) {
        if (name_entry != head) PyMem_Free(name_entry);
        close(fd);
        return NULL;
    }
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    *p++ = 0x0a;
    p += put_varint(p, total);
    memcpy(p, name_entry, lh);
    p += lh;
    if (name_entry != head) PyMem_Free(name_entry);
    *p++ = 0x0a;
    p += put_varint(p, entry);
    memcpy(p, key_image, sizeof key_image);
    p += sizeof key_image;
    p += put_varint(p, feature);
    *p++ = 0x0a;
    p += put_varint(p, list);
    *p++ = 0x0a;
    p += put_varint(p, sz);
    int ok;
    check_result r;
    Py_BEGIN_ALLOW_THREADS
    /* One byte more than the size (it lands where the tail goes): a file that grew
     * since fstat reads more and takes the general path, as a short read does. */
    ok = read_all(fd, p, (Py_ssize_t)sz + 1) == (Py_ssize_t)sz && p[0] == 0xFF &&
         p[1] == 0xD8 && p[2] == 0xFF && check_jpeg(p, (unsigned long)sz, max_pixels, &r) == 0;
    if (ok) memcpy(p + sz, tail, lt);
    close(fd);
    Py_END_ALLOW_THREADS
    if (!ok) {
        Py_DECREF(out);
        return NULL;
    }
    *size = sz;
    return out;
}

static PyObject *pack_files(PyObject *self, PyObject *args) {
    PyObject *members, *suffixes;
    Py_ssize_t start, max_count;
    int ahead;
    long long max_batch_bytes, max_bytes;
    unsigned long long max_pixels;
    if (!PyArg_ParseTuple(args, "O!nniLO!LK", &PyList_Type, &members, &start, &max_count,
                          &ahead, &max_batch_bytes, &PyTuple_Type, &suffixes, &max_bytes,
                          &max_pixels)) {
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(members);
    if (start < 0 || start > n || max_count < 1) {
        return PyErr_Format(PyExc_ValueError, "pack_files: start %zd of %zd members, "
                            "max_count %zd (need 0 <= start <= members, max_count >= 1)",
                            start, n, max_count);
    }
    suffix_set sfx;
    if (get_suffixes(suffixes, &sfx) < 0) return NULL;
    if (ahead < 0) ahead = 0;
    if (ahead > AHEAD_MAX - 1) ahead = AHEAD_MAX - 1;
    Py_ssize_t stop = n - start < max_count ? n : start + max_count;
    int fds[AHEAD_MAX];
    member ms[AHEAD_MAX];
    Py_ssize_t owner[AHEAD_MAX]; /* the member whose file fds[i] is; -1: none */
    for (int i = 0; i < AHEAD_MAX; i++) owner[i] = -1;
    PyObject *results = PyList_New(0);
    if (results == NULL) return NULL;
    unsigned long long bytes = 0;
    Py_ssize_t opened = start; /* members below this were opened ahead (or skipped) */
    Py_ssize_t k = start;
    for (; k < stop; k++) {
        /* Open the members up to ahead past this one, in order. */
        for (; opened < stop && opened <= k + ahead; opened++) {
            member a;
            if (!get_member(members, opened, &sfx, &a)) continue;
            int fd = open_ahead(a.path);
            if (fd < 0) continue;
            int slot = (int)(opened % AHEAD_MAX);
            fds[slot] = fd;
            ms[slot] = a;
            owner[slot] = opened;
        }
        PyObject *rec = NULL;
        int slot = (int)(k % AHEAD_MAX);
        if (owner[slot] == k) { /* else left to the general path */
            owner[slot] = -1;
            unsigned long long sz = 0;
            rec = pack_member(fds[slot], &ms[slot], max_bytes, max_pixels, &sz);
            if (rec == NULL && PyErr_Occurred()) goto fail;
            bytes += sz;
        }
        if (PyList_Append(results, rec == NULL ? Py_None : rec) < 0) {
            Py_XDECREF(rec);
            goto fail;
        }
        Py_XDECREF(rec);
        if (bytes >= (unsigned long long)max_batch_bytes) {
            k++;
            break;
        }
    }
    for (int i = 0; i < AHEAD_MAX; i++) {
        if (owner[i] >= 0) close(fds[i]);
    }
    return Py_BuildValue("(NK)", results, bytes);
fail:
    for (int i = 0; i < AHEAD_MAX; i++) {
        if (owner[i] >= 0) close(fds[i]);
    }
    Py_DECREF(results);
    return NULL;
}

#ifdef __APPLE__
#define ST_MTIME_NS(st) ((long long)(st).st_mtimespec.tv_sec * 1000000000LL + (st).st_mtimespec.tv_nsec)
#else
#define ST_MTIME_NS(st) ((long long)(st).st_mtim.tv_sec * 1000000000LL + (st).st_mtim.tv_nsec)
#endif

/* A growing byte buffer for stat_lines. */
typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

static int sbuf_put(sbuf *b, const char *data, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 1 << 16;
        while (cap < b->n + n) cap *= 2;
        char *q = realloc(b->p, cap);
        if (q == NULL) return -1;
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
    return 0;
}

static PyObject *stat_lines(PyObject *self, PyObject *args) {
    PyObject *pairs;
    if (!PyArg_ParseTuple(args, "O", &pairs)) return NULL;
    PyObject *it = PyObject_GetIter(pairs);
    if (it == NULL) return NULL;
    sbuf b = {NULL, 0, 0};
    int dirfd = -1, fallback = 0, failed = 0;
    char *dir = NULL; /* the folder dirfd was opened on (dirfd -1: none, or it failed) */
    size_t dirlen = 0, dircap = 0;
    PyObject *item;
    while ((item = PyIter_Next(it)) != NULL) {
        PyObject *path, *label;
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
            !PyUnicode_Check(path = PyTuple_GET_ITEM(item, 0)) ||
            !PyLong_CheckExact(label = PyTuple_GET_ITEM(item, 1))) {
            fallback = 1;
        }
        Py_ssize_t plen = 0;
        const char *cpath = fallback ? NULL : PyUnicode_AsUTF8AndSize(path, &plen);
        long long lab = 0;
        if (!fallback && cpath == NULL) {
            PyErr_Clear(); /* not valid UTF-8 (surrogates): the Python function raises */
            fallback = 1;
        }
        if (!fallback && (Py_ssize_t)strlen(cpath) != plen) fallback = 1; /* a NUL */
        if (!fallback) {
            int overflow = 0;
            lab = PyLong_AsLongLongAndOverflow(label, &overflow);
            if (overflow || (lab == -1 && PyErr_Occurred())) {
                PyErr_Clear();
                fallback = 1;
            }
        }
        if (fallback) {
            Py_DECREF(item);
            break;
        }
        const char *slash = memrchr(cpath, '/', (size_t)plen);
        struct stat st;
        int ok;
        if (slash == NULL || slash[1] == '\0' || slash == cpath) {
            ok = stat(cpath, &st) == 0; /* no folder part, or "/name": as it is */
        } else {
            size_t dl = (size_t)(slash - cpath);
            if (dirfd < 0 || dl != dirlen || memcmp(dir, cpath, dl) != 0) {
                if (dirfd >= 0) close(dirfd);
                if (dl + 1 > dircap) {
                    char *q = realloc(dir, dl + 1);
                    if (q == NULL) {
                        Py_DECREF(item);
                        failed = 1;
                        break;
                    }
                    dir = q;
                    dircap = dl + 1;
                }
                memcpy(dir, cpath, dl);
                dir[dl] = '\0';
                dirlen = dl;
                dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            }
            ok = dirfd >= 0 ? fstatat(dirfd, slash + 1, &st, 0) == 0 : stat(cpath, &st) == 0;
        }
        char tail[96];
        int tn = ok ? snprintf(tail, sizeof tail, "%c%lld%c%lld%c%lld\n", 0, lab, 0,
                               (long long)st.st_size, 0,
                               ST_MTIME_NS(st))
                    : snprintf(tail, sizeof tail, "%c%lld%cmissing\n", 0, lab, 0);
        int put = sbuf_put(&b, cpath, (size_t)plen) < 0 || sbuf_put(&b, tail, (size_t)tn) < 0;
        Py_DECREF(item); /* cpath lives in item's str: copied above, not used after */
        if (put) {
            failed = 1;
            break;
        }
    }
    Py_DECREF(it);
    if (dirfd >= 0) close(dirfd);
    free(dir);
    PyObject *out = NULL;
    if (failed) {
        PyErr_NoMemory();
    } else if (!PyErr_Occurred()) { /* else: iterating pairs raised */
        out = fallback ? (Py_INCREF(Py_None), Py_None)
                       : PyBytes_FromStringAndSize(b.p ? b.p : "", (Py_ssize_t)b.n);
    }
    free(b.p);
    return out;
}

/* --- list_folder: one folder's entries for trainers/scan.py -------------------------- */

/* One entry of list_folder: its name (in the arena) and whether it is a folder. */
typedef struct {
    size_t off, len;
    int dir;
} dentry;

static const char *arena_base; /* for qsort's comparison (the GIL is held: one caller) */

static int dentry_cmp(const void *a, const void *b) {
    const dentry *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(arena_base + x->off, arena_base + y->off, n);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

static PyObject *list_folder(PyObject *self, PyObject *args) {
    PyObject *path = NULL;
    if (!PyArg_ParseTuple(args, "O&", PyUnicode_FSConverter, &path)) return NULL;
    const char *cpath = PyBytes_AS_STRING(path);
    DIR *d;
    Py_BEGIN_ALLOW_THREADS
    d = opendir(cpath);
    Py_END_ALLOW_THREADS
    if (d == NULL) {
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, cpath);
        Py_DECREF(path);
        return NULL;
    }
    sbuf names = {NULL, 0, 0};
    dentry *ents = NULL;
    size_t n = 0, cap = 0;
    int err = 0, oom = 0;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(d);
        if (e == NULL) {
            err = errno;
            break;
        }
        const char *nm = e->d_name;
        if (nm[0] == '.' && (nm[1] == '\0' || (nm[1] == '.' && nm[2] == '\0'))) continue;
        int dir = e->d_type == DT_DIR;
        if (e->d_type == DT_LNK || e->d_type == DT_UNKNOWN) { /* os.DirEntry.is_dir() */
            struct stat st;
            dir = fstatat(dirfd(d), nm, &st, 0) == 0 && S_ISDIR(st.st_mode);
        }
        if (n == cap) {
            size_t c = cap ? 2 * cap : 1024;
            dentry *q = realloc(ents, c * sizeof *ents);
            if (q == NULL) {
                oom = 1;
                break;
            }
            ents = q;
            cap = c;
        }
        size_t len = strlen(nm);
        ents[n].off = names.n;
        ents[n].len = len;
        ents[n].dir = dir;
        if (sbuf_put(&names, nm, len) < 0) {
            oom = 1;
            break;
        }
        n++;
    }
    closedir(d);
    Py_END_ALLOW_THREADS
    PyObject *result = NULL, *list = NULL, *dirs = NULL;
    if (oom) {
        PyErr_NoMemory();
        goto done;
    }
    if (err) {
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, cpath);
        goto done;
    }
    arena_base = names.p;
    if (n > 1) qsort(ents, n, sizeof *ents, dentry_cmp);
    list = PyList_New((Py_ssize_t)n);
    dirs = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    if (list == NULL || dirs == NULL) goto done;
    char *flags = PyBytes_AS_STRING(dirs);
    for (size_t i = 0; i < n; i++) {
        /* Byte order is str order for valid UTF-8 only: anything else is left to
         * os.scandir (None). */
        PyObject *s = PyUnicode_DecodeUTF8(names.p + ents[i].off, (Py_ssize_t)ents[i].len,
                                           "strict");
        if (s == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) goto done;
            PyErr_Clear();
            Py_CLEAR(list);
            Py_CLEAR(dirs);
            result = Py_None;
            Py_INCREF(result);
            goto done;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, s);
        flags[i] = (char)ents[i].dir;
    }
    result = PyTuple_Pack(2, list, dirs);
done:
    Py_XDECREF(list);
    Py_XDECREF(dirs);
    free(names.p);
    free(ents);
    Py_DECREF(path);
    return result;
}

static PyMethodDef methods[] = {
    {"decode_crop", decode_crop, METH_VARARGS,
     "decode_crop(data, top, left, height, width, scale_denom, exact=0) -> "
     "(pixels, out_height, out_width, x_offset); exact: ISLOW + fancy upsampling "
     "instead of IFAST + plain; see trainers/_jpegcrop.c."},
    {"check", check, METH_VARARGS,
     "check(data) -> (height, width, components); raises ValueError when a decode to RGB "
     "would fail (entropy-decodes every scan, no pixels); see trainers/_jpegcrop.c."},
    {"example_image_label", example_image_label, METH_VARARGS,
     "example_image_label(record) -> (image_start, image_end, label) or None; the walk of "
     "trainers/example_wire.py image_and_label in C (None: leave it to that walker)."},
    {"pack_files", pack_files, METH_VARARGS,
     "pack_files(members, start, max_count, ahead, max_batch_bytes, suffixes, max_bytes, "
     "max_pixels) -> (records, image_bytes); the pack's loop over files kept as they "
     "are; see trainers/_jpegcrop.c."},
    {"prefetch", prefetch, METH_VARARGS,
     "prefetch(path) -> None; asks the kernel to read the file into the page cache in "
     "the background (posix_fadvise WILLNEED); errors are ignored. See "
     "trainers/_jpegcrop.c."},
    {"list_folder", list_folder, METH_VARARGS,
     "list_folder(path) -> (names, dirs) or None; a folder's entries sorted by name, with "
     "whether each is a folder (links followed); see trainers/_jpegcrop.c."},
    {"stat_lines", stat_lines, METH_VARARGS,
     "stat_lines(pairs) -> bytes or None; trainers/pack.py _stat_lines (the pack "
     "fingerprint's lines) in C; see trainers/_jpegcrop.c."},
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
