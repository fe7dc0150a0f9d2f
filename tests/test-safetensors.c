// Tests of the safetensors reader and writer: exact F16/BF16 conversions, round trips, a file
// laid out by hand as the spec (and Python's safetensors) defines it, sharded directories, and
// every error path, each checked for its status and for a message naming the tensor or file.

#include "io-testutil.h"

#include "io/halfconv.h"
#include "loom/safetensors.h"

#include <jansson.h>
#include <math.h>

// ---- independent references ------------------------------------------------------------------

// F16 value by its definition: (-1)^s * 2^(e-15) * (1 + m/1024), subnormals 2^-14 * m/1024.
static double ref_f16(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(m + 1024, e - 25);
    return s ? -v : v;
}

// BF16 value by its definition: 8-bit exponent (bias 127), 7-bit mantissa.
static double ref_bf16(uint16_t h) {
    int s = h >> 15, e = (h >> 7) & 255, m = h & 127;
    double v = e == 0 ? ldexp(m, -133) : e == 255 ? (m ? NAN : INFINITY) : ldexp(m + 128, e - 134);
    return s ? -v : v;
}

static int same_float(float a, double b) {
    if (isnan(b)) return isnan(a);
    return a == (float)b && !signbit(a) == !signbit(b);
}

// ---- conversions -----------------------------------------------------------------------------

static void test_widening_exhaustive(void) {
    int bad_f16 = 0, bad_bf16 = 0;
    for (uint32_t h = 0; h <= 0xffff; h++) {
        bad_f16 += !same_float(loom__f16_to_f32((uint16_t)h), ref_f16((uint16_t)h));
        bad_bf16 += !same_float(loom__bf16_to_f32((uint16_t)h), ref_bf16((uint16_t)h));
    }
    CHECK_MSG(bad_f16 == 0, "%d F16 values decode wrongly", bad_f16);
    CHECK_MSG(bad_bf16 == 0, "%d BF16 values decode wrongly", bad_bf16);
}

// For every pair of adjacent positive finite values a < b of a 16-bit format: a and b map to
// themselves, their midpoint to the one with an even mantissa, and the floats just around the
// midpoint to the nearer one. `limit` is the bit pattern of +inf.
static int check_rounding(uint16_t (*narrow)(float), double (*ref)(uint16_t), uint16_t limit) {
    int bad = 0;
    for (uint32_t a = 0; a + 1 < limit; a++) {
        float fa = (float)ref((uint16_t)a), fb = (float)ref((uint16_t)(a + 1));
        float mid = (float)(((double)fa + (double)fb) / 2);  // exact: one more significant bit
        uint16_t even = (a & 1) ? (uint16_t)(a + 1) : (uint16_t)a;
        bad += narrow(fa) != a;
        bad += narrow(-fa) != (uint16_t)(a | 0x8000);
        bad += narrow(mid) != even;
        bad += narrow(nextafterf(mid, 0)) != a;
        bad += narrow(nextafterf(mid, INFINITY)) != a + 1;
    }
    return bad;
}

static void test_narrowing(void) {
    CHECK_MSG(check_rounding(loom__f32_to_f16, ref_f16, 0x7c00) == 0, "F16 rounding");
    CHECK_MSG(check_rounding(loom__f32_to_bf16, ref_bf16, 0x7f80) == 0, "BF16 rounding");
    // Known constants.
    CHECK(loom__f32_to_f16(1.0f) == 0x3c00);
    CHECK(loom__f32_to_f16(-2.5f) == 0xc100);
    CHECK(loom__f32_to_f16(65504.0f) == 0x7bff);
    CHECK(loom__f32_to_f16(65519.0f) == 0x7bff);
    CHECK(loom__f32_to_f16(65520.0f) == 0x7c00);  // the tie above the largest F16 goes to inf
    CHECK(loom__f32_to_f16(1e10f) == 0x7c00);
    CHECK(loom__f32_to_f16(-INFINITY) == 0xfc00);
    CHECK(loom__f32_to_f16(0.1f) == 0x2e66);
    CHECK(loom__f32_to_f16(ldexpf(1, -24)) == 0x0001);     // smallest subnormal
    CHECK(loom__f32_to_f16(ldexpf(1, -25)) == 0x0000);     // tie rounds to even (zero)
    CHECK(loom__f32_to_f16(ldexpf(3, -26)) == 0x0001);     // above the tie
    CHECK(loom__f32_to_f16(ldexpf(1, -14)) == 0x0400);     // smallest normal
    CHECK(loom__f32_to_f16(1e-30f) == 0x0000);
    CHECK(loom__f32_to_f16(-0.0f) == 0x8000);
    CHECK((loom__f32_to_f16(NAN) & 0x7c00) == 0x7c00 && (loom__f32_to_f16(NAN) & 0x3ff) != 0);
    CHECK(loom__f32_to_bf16(1.0f) == 0x3f80);
    CHECK(loom__f32_to_bf16(-2.5f) == 0xc020);
    CHECK(loom__f32_to_bf16(1.00390625f) == 0x3f80);  // 1 + 2^-8: tie, stays even
    CHECK(loom__f32_to_bf16(1.01171875f) == 0x3f82);  // 1 + 3*2^-8: tie, rounds up to even
    CHECK(loom__f32_to_bf16(3.4028235e38f) == 0x7f80);  // FLT_MAX rounds to inf
    uint16_t nan16 = loom__f32_to_bf16(NAN);
    CHECK((nan16 & 0x7f80) == 0x7f80 && (nan16 & 0x7f) != 0);
}

// ---- round trip --------------------------------------------------------------------------------

static const float f32_vals[6] = {0.0f, -1.5f, 3.25e30f, 1e-40f, -0.0f, 65504.0f};
static const uint16_t bf16_bits[5] = {0x3f80, 0xc020, 0x7f7f, 0x0001, 0xff80};
static const float bf16_expect[5] = {1.0f, -2.5f, 3.38953139e38f, 9.18354962e-41f, -INFINITY};
static const uint16_t f16_bits[8] = {0x3c00, 0xc100, 0x7bff, 0x0001, 0x03ff, 0x8000, 0x7c00, 0x7e00};
static const int32_t i32_vals[3] = {-7, 0, 2147483647};
static const int64_t i64_vals[2] = {5, -3};
static const int64_t i64_big[1] = {(int64_t)1 << 40};
static const uint16_t u16_vals[2] = {65535, 0};
static const float scalar_val = 42.0f;

static loom_named_tensor nt(const char *name, loom_dtype dt, int ndim, const int64_t *shape,
                            const void *data) {
    loom_named_tensor t = {.name = name, .dtype = dt, .ndim = ndim, .data = data};
    for (int i = 0; i < ndim; i++) t.shape[i] = shape[i];
    return t;
}

static uint64_t le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static void test_round_trip(void) {
    const char *path = tu_path("rt.safetensors");
    const int64_t s23[] = {2, 3}, s5[] = {5}, s24[] = {2, 4}, s3[] = {3}, s2[] = {2}, s1[] = {1},
                  s04[] = {0, 4};
    loom_named_tensor ts[] = {
        nt("f32", LOOM_DTYPE_F32, 2, s23, f32_vals),
        nt("bf16", LOOM_DTYPE_BF16, 1, s5, bf16_bits),
        nt("f16", LOOM_DTYPE_F16, 2, s24, f16_bits),
        nt("i32", LOOM_DTYPE_I32, 1, s3, i32_vals),
        nt("i64", LOOM_DTYPE_I64, 1, s2, i64_vals),
        nt("i64.big", LOOM_DTYPE_I64, 1, s1, i64_big),
        nt("u16", LOOM_DTYPE_U16, 1, s2, u16_vals),
        nt("scalar", LOOM_DTYPE_F32, 0, NULL, &scalar_val),
        nt("empty", LOOM_DTYPE_F32, 2, s04, NULL),
    };
    const int n = (int)(sizeof ts / sizeof *ts);
    const char *meta[] = {"format", "pt", "step", "12"};
    CHECK_OK(loom_safetensors_write(path, n, ts, 2, meta));
    CHECK(tu_count_entries(tu_scratch, ".tmp.") == 0);

    // Layout: 8-byte length, header padded with spaces to 8 bytes, data in the given order.
    size_t size = 0;
    uint8_t *bytes = tu_read_file(path, &size);
    CHECK(bytes != NULL && size >= 8);
    if (bytes && size >= 8) {
        uint64_t hlen = le64(bytes);
        size_t data_bytes = 24 + 10 + 16 + 12 + 16 + 8 + 4 + 4 + 0;
        CHECK(hlen % 8 == 0 && 8 + hlen + data_bytes == size);
        CHECK(bytes[8] == '{');
        json_t *h = json_loadb((const char *)bytes + 8, hlen, 0, NULL);
        CHECK(h && json_is_object(h) && json_object_size(h) == (size_t)n + 1);
        json_t *off = json_object_get(json_object_get(h, "bf16"), "data_offsets");
        CHECK(json_integer_value(json_array_get(off, 0)) == 24 &&
              json_integer_value(json_array_get(off, 1)) == 34);
        CHECK(!strcmp(json_string_value(json_object_get(json_object_get(h, "__metadata__"),
                                                        "step")), "12"));
        CHECK(!memcmp(bytes + 8 + hlen, f32_vals, sizeof f32_vals));
        json_decref(h);
    }
    free(bytes);

    loom_weights_t w = NULL;
    CHECK_OK(loom_weights_open(path, &w));
    CHECK(loom_weights_count(w) == n);
    CHECK(!strcmp(loom_weights_path(w), path));
    CHECK(loom_weights_metadata(w, "step") && !strcmp(loom_weights_metadata(w, "step"), "12"));
    CHECK(loom_weights_metadata(w, "nope") == NULL);
    const char *prev = "";
    for (int i = 0; i < loom_weights_count(w); i++) {
        loom_tensor_info info;
        CHECK_OK(loom_weights_info_at(w, i, &info));
        CHECK(strcmp(prev, info.name) < 0 && !strcmp(info.file, path));
        prev = info.name;
    }
    loom_tensor_info info;
    CHECK_OK(loom_weights_find(w, "f16", &info));
    CHECK(info.dtype == LOOM_DTYPE_F16 && info.ndim == 2 && info.shape[0] == 2 &&
          info.shape[1] == 4);
    CHECK(loom_weights_has(w, "i32") && !loom_weights_has(w, "I32"));

    float f[8];
    CHECK_OK(loom_weights_read_f32(w, "f32", 2, s23, f));
    CHECK(!memcmp(f, f32_vals, sizeof f32_vals));
    CHECK_OK(loom_weights_read_f32(w, "bf16", 1, s5, f));
    for (int i = 0; i < 5; i++) CHECK_MSG(same_float(f[i], bf16_expect[i]), "bf16[%d]", i);
    CHECK_OK(loom_weights_read_f32(w, "f16", 2, s24, f));
    const double f16_expect[8] = {1.0, -2.5, 65504.0, 5.9604644775390625e-08,
                                  6.097555160522461e-05, -0.0, INFINITY, NAN};
    for (int i = 0; i < 8; i++) CHECK_MSG(same_float(f[i], f16_expect[i]), "f16[%d]", i);
    CHECK_OK(loom_weights_read_f32(w, "scalar", 0, NULL, f));
    CHECK(f[0] == 42.0f);
    CHECK_OK(loom_weights_read_f32(w, "empty", 2, s04, f));

    int32_t iv[3];
    CHECK_OK(loom_weights_read_i32(w, "i32", 1, s3, iv));
    CHECK(!memcmp(iv, i32_vals, sizeof i32_vals));
    CHECK_OK(loom_weights_read_i32(w, "i64", 1, s2, iv));
    CHECK(iv[0] == 5 && iv[1] == -3);
    CHECK_OK(loom_weights_read_i32(w, "u16", 1, s2, iv));
    CHECK(iv[0] == 65535 && iv[1] == 0);

    // Reading errors on a valid file.
    CHECK_ERR(loom_weights_read_i32(w, "i64.big", 1, s1, iv), LOOM_ERR_UNSUPPORTED, "i64.big",
              path);
    CHECK_ERR(loom_weights_read_f32(w, "i32", 1, s3, f), LOOM_ERR_UNSUPPORTED, "'i32'", path);
    CHECK_ERR(loom_weights_read_i32(w, "f32", 2, s23, iv), LOOM_ERR_UNSUPPORTED, "'f32'", path);
    CHECK_ERR(loom_weights_read_f32(w, "nope", 1, s3, f), LOOM_ERR_NOT_FOUND, "'nope'", path);
    CHECK_ERR(loom_weights_find(w, "nope", &info), LOOM_ERR_NOT_FOUND, "'nope'", path);
    const int64_t s32[] = {3, 2};
    CHECK_ERR(loom_weights_read_f32(w, "f32", 2, s32, f), LOOM_ERR_SHAPE,
              "has shape [2, 3], expected [3, 2]", path);
    CHECK_ERR(loom_weights_read_f32(w, "f32", 1, s23, f), LOOM_ERR_SHAPE, "expected [2]", "'f32'");
    CHECK_ERR(loom_weights_info_at(w, n, &info), LOOM_ERR_INVALID, NULL, NULL);
    loom_weights_close(w);
    loom_weights_close(NULL);

    // A truncated copy: the data section is cut short.
    bytes = tu_read_file(path, &size);
    const char *cut = tu_path("cut.safetensors");
    CHECK(bytes && tu_write_file(cut, bytes, size - 6) == 0);
    free(bytes);
    w = NULL;
    CHECK_ERR(loom_weights_open(cut, &w), LOOM_ERR_FORMAT, cut, "truncated");
    CHECK(w == NULL);
}

// Hint when names differ by a leading "prefix.".
static void test_name_hint(void) {
    const char *path = tu_path("hint.safetensors");
    const int64_t s1[] = {1};
    loom_named_tensor t = nt("transformer.h.0.w", LOOM_DTYPE_F32, 1, s1, &scalar_val);
    CHECK_OK(loom_safetensors_write(path, 1, &t, 0, NULL));
    loom_weights_t w = NULL;
    CHECK_OK(loom_weights_open(path, &w));
    float f;
    CHECK_ERR(loom_weights_read_f32(w, "h.0.w", 1, s1, &f), LOOM_ERR_NOT_FOUND, "'h.0.w'",
              "did you mean 'transformer.h.0.w'");
    loom_weights_close(w);
}

// ---- hand-made files ---------------------------------------------------------------------------

// Write <8-byte LE length><header padded with spaces to `pad_to` mod 8 == 0 or as is><data>.
static void write_st(const char *path, const char *header, int pad8, const void *data,
                     size_t data_len) {
    size_t hlen = strlen(header), padded = pad8 ? (hlen + 7) / 8 * 8 : hlen;
    size_t total = 8 + padded + data_len;
    uint8_t *buf = malloc(total);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    memcpy(buf + 8, header, hlen);
    memset(buf + 8 + hlen, ' ', padded - hlen);
    if (data_len) memcpy(buf + 8 + padded, data, data_len);
    CHECK(tu_write_file(path, buf, total) == 0);
    free(buf);
}

// A file laid out byte by byte as the safetensors spec defines it (and as Python writes it).
static void test_python_layout(void) {
    static const uint8_t data[] = {
        0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0,  // bias: F32 1.0, -2.0
        0xc0, 0x3f, 0x80, 0xbf,                          // w: BF16 1.5, -1.0
        0x00, 0x3c, 0x00, 0xbc,                          // h: F16 1.0, -1.0
    };
    const char *header = "{\"__metadata__\":{\"format\":\"pt\"},"
                         "\"bias\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                         "\"w\":{\"dtype\":\"BF16\",\"shape\":[1,2],\"data_offsets\":[8,12]},"
                         "\"h\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[12,16]}}";
    // Padded (as Python writes it) and unpadded (data at an odd offset: reads must not assume
    // alignment).
    for (int pad8 = 1; pad8 >= 0; pad8--) {
        const char *path = tu_path(pad8 ? "py.safetensors" : "py-odd.safetensors");
        write_st(path, header, pad8, data, sizeof data);
        loom_weights_t w = NULL;
        CHECK_OK(loom_weights_open(path, &w));
        CHECK(loom_weights_count(w) == 3);
        CHECK(loom_weights_metadata(w, "format") && !strcmp(loom_weights_metadata(w, "format"),
                                                             "pt"));
        float f[2];
        const int64_t s2[] = {2}, s12[] = {1, 2};
        CHECK_OK(loom_weights_read_f32(w, "bias", 1, s2, f));
        CHECK(f[0] == 1.0f && f[1] == -2.0f);
        CHECK_OK(loom_weights_read_f32(w, "w", 2, s12, f));
        CHECK(f[0] == 1.5f && f[1] == -1.0f);
        CHECK_OK(loom_weights_read_f32(w, "h", 1, s2, f));
        CHECK(f[0] == 1.0f && f[1] == -1.0f);
        loom_weights_close(w);
    }
}

// Open a hand-made file expected to fail with `code` and a message holding `word` and the path.
static void expect_bad_file(const char *name, const char *header, size_t data_len, int code,
                            const char *word, int line) {
    static const uint8_t zeros[64];
    const char *path = tu_path(name);
    write_st(path, header, 1, zeros, data_len);
    loom_weights_t w = NULL;
    int st = loom_weights_open(path, &w);
    const char *msg = loom_last_error();
    if (getenv("LOOM_TEST_VERBOSE")) fprintf(stderr, "  [%d] %s\n", line, msg);
    CHECK_MSG(st == code, "line %d: status %s, expected %s: %s", line, loom_status_name(st),
              loom_status_name(code), msg);
    CHECK_MSG(strstr(msg, path) && strstr(msg, word), "line %d: message lacks '%s' or the path: "
              "%s", line, word, msg);
    CHECK(w == NULL);
}

#define T1(dt, sh, off) "{\"t\":{\"dtype\":\"" dt "\",\"shape\":" sh ",\"data_offsets\":" off "}}"

static void test_bad_headers(void) {
    expect_bad_file("f64.st", T1("F64", "[1]", "[0,8]"), 8, LOOM_ERR_UNSUPPORTED,
                    "unsupported dtype F64 of tensor 't'", __LINE__);
    expect_bad_file("i8.st", T1("I8", "[4]", "[0,4]"), 4, LOOM_ERR_UNSUPPORTED, "dtype I8",
                    __LINE__);
    expect_bad_file("xyz.st", T1("XYZ", "[4]", "[0,4]"), 4, LOOM_ERR_FORMAT,
                    "unknown dtype 'XYZ'", __LINE__);
    expect_bad_file("oob.st", T1("F32", "[2]", "[0,8]"), 4, LOOM_ERR_FORMAT,
                    "tensor 't' has data_offsets [0, 8] beyond", __LINE__);
    expect_bad_file("size.st", T1("F32", "[3]", "[0,8]"), 8, LOOM_ERR_FORMAT,
                    "tensor 't' (F32, shape [3]) needs 12 bytes", __LINE__);
    expect_bad_file("order.st", T1("F32", "[0]", "[8,0]"), 8, LOOM_ERR_FORMAT, "begin > end",
                    __LINE__);
    expect_bad_file("neg.st", T1("F32", "[-1]", "[0,0]"), 0, LOOM_ERR_FORMAT,
                    "dimension 0 of tensor 't'", __LINE__);
    expect_bad_file("rank.st", T1("F32", "[1,1,1,1,1,1,1]", "[0,4]"), 4, LOOM_ERR_FORMAT,
                    "\"shape\" of tensor 't'", __LINE__);
    expect_bad_file("nodtype.st", "{\"t\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                    LOOM_ERR_FORMAT, "tensor 't' has no \"dtype\"", __LINE__);
    expect_bad_file("entry.st", "{\"t\":[1]}", 0, LOOM_ERR_FORMAT, "tensor 't'", __LINE__);
    expect_bad_file("notjson.st", "{\"t\": ", 0, LOOM_ERR_FORMAT, "not valid JSON", __LINE__);
    expect_bad_file("array.st", "[1, 2]", 0, LOOM_ERR_FORMAT, "not an object", __LINE__);
    expect_bad_file("dup.st", "{\"t\":1,\"t\":2}", 0, LOOM_ERR_FORMAT, "not valid JSON",
                    __LINE__);
    expect_bad_file("meta.st", "{\"__metadata__\":{\"k\":1}}", 0, LOOM_ERR_FORMAT, "'k'",
                    __LINE__);
    expect_bad_file("hole.st",
                    "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                    12, LOOM_ERR_FORMAT, "before tensor 'b' belong to no tensor", __LINE__);
    expect_bad_file("overlap.st",
                    "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                    12, LOOM_ERR_FORMAT, "tensors 'a' and 'b' overlap", __LINE__);
    expect_bad_file("trail.st", T1("F32", "[1]", "[0,4]"), 12, LOOM_ERR_FORMAT,
                    "cover only 4", __LINE__);

    // Byte-level damage.
    const char *shorty = tu_path("short.st");
    CHECK(tu_write_file(shorty, "abc", 3) == 0);
    CHECK_ERR(loom_weights_open(shorty, &(loom_weights_t){0}), LOOM_ERR_FORMAT, shorty,
              "too short");
    const char *empty = tu_path("empty.st");
    CHECK(tu_write_file(empty, "", 0) == 0);
    CHECK_ERR(loom_weights_open(empty, &(loom_weights_t){0}), LOOM_ERR_FORMAT, empty, "0 bytes");
    uint8_t big[16] = {0xe8, 0x03, 0, 0, 0, 0, 0, 0, '{', '}'};  // claims 1000 header bytes
    const char *biglen = tu_path("biglen.st");
    CHECK(tu_write_file(biglen, big, sizeof big) == 0);
    CHECK_ERR(loom_weights_open(biglen, &(loom_weights_t){0}), LOOM_ERR_FORMAT, biglen,
              "header length 1000 exceeds");
    big[5] = 1;  // 2^40 + 1000
    CHECK(tu_write_file(biglen, big, sizeof big) == 0);
    CHECK_ERR(loom_weights_open(biglen, &(loom_weights_t){0}), LOOM_ERR_FORMAT, biglen, "absurd");

    const char *missing = tu_path("missing.safetensors");
    CHECK_ERR(loom_weights_open(missing, &(loom_weights_t){0}), LOOM_ERR_NOT_FOUND, missing,
              NULL);
    const char *nodir = tu_path("emptydir");
    CHECK(mkdir(nodir, 0777) == 0);
    CHECK_ERR(loom_weights_open(nodir, &(loom_weights_t){0}), LOOM_ERR_NOT_FOUND, nodir,
              "model.safetensors.index.json");
    CHECK_ERR(loom_weights_open(NULL, &(loom_weights_t){0}), LOOM_ERR_INVALID, NULL, NULL);
}

// ---- sharded sets ------------------------------------------------------------------------------

static void test_sharded(void) {
    const char *dir = tu_path("sharded");
    float a[4] = {1, 2, 3, 4}, b[4] = {-1, -2, -3, -4}, c[10], d[2] = {7, 8};
    uint16_t e[4] = {0x3c00, 0x4000, 0x4200, 0x4400};  // F16 1, 2, 3, 4
    for (int i = 0; i < 10; i++) c[i] = (float)i / 3;
    const int64_t s4[] = {4}, s25[] = {2, 5}, s2[] = {2};
    loom_named_tensor ts[] = {
        nt("a", LOOM_DTYPE_F32, 1, s4, a),   // 16 bytes
        nt("b", LOOM_DTYPE_F32, 1, s4, b),   // 16: shard 1 = a, b (32 bytes)
        nt("c", LOOM_DTYPE_F32, 2, s25, c),  // 40: bigger than the limit, a shard of its own
        nt("d", LOOM_DTYPE_F32, 1, s2, d),   // 8
        nt("e", LOOM_DTYPE_F16, 1, s4, e),   // 8: shard 3 = d, e
    };
    static const char *const shard_of[] = {"model-00001-of-00003.safetensors",
                                           "model-00001-of-00003.safetensors",
                                           "model-00002-of-00003.safetensors",
                                           "model-00003-of-00003.safetensors",
                                           "model-00003-of-00003.safetensors"};
    CHECK_OK(loom_safetensors_write_sharded(dir, 5, ts, 32));
    char p[600];
    for (int i = 0; i < 5; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, shard_of[i]);
        CHECK_MSG(tu_file_exists(p), "missing %s", p);
    }
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    CHECK(!tu_file_exists(p));
    CHECK(tu_count_entries(dir, ".tmp.") == 0);

    char index[600];
    snprintf(index, sizeof index, "%s/model.safetensors.index.json", dir);
    json_t *root = json_load_file(index, 0, NULL);
    CHECK(root != NULL);
    CHECK(json_integer_value(json_object_get(json_object_get(root, "metadata"), "total_size")) ==
          88);
    json_t *wm = json_object_get(root, "weight_map");
    CHECK(json_object_size(wm) == 5);
    for (int i = 0; i < 5; i++)
        CHECK(!strcmp(json_string_value(json_object_get(wm, ts[i].name)), shard_of[i]));
    json_decref(root);

    // Through the directory and through the index file itself.
    const char *opens[] = {dir, index};
    for (int k = 0; k < 2; k++) {
        loom_weights_t w = NULL;
        CHECK_OK(loom_weights_open(opens[k], &w));
        CHECK(loom_weights_count(w) == 5);
        float got[10];
        for (int i = 0; i < 4; i++) {
            CHECK_OK(loom_weights_read_f32(w, ts[i].name, ts[i].ndim, ts[i].shape, got));
            CHECK(!memcmp(got, ts[i].data, (i == 2 ? 10 : i == 3 ? 2 : 4) * sizeof(float)));
            loom_tensor_info info;
            CHECK_OK(loom_weights_find(w, ts[i].name, &info));
            size_t nf = strlen(info.file), ns = strlen(shard_of[i]);
            CHECK(nf > ns && !strcmp(info.file + nf - ns, shard_of[i]));
        }
        CHECK_OK(loom_weights_read_f32(w, "e", 1, s4, got));
        CHECK(got[0] == 1 && got[1] == 2 && got[2] == 3 && got[3] == 4);
        CHECK(loom_weights_metadata(w, "format") != NULL);
        loom_weights_close(w);
    }

    // Rewriting unsharded replaces the layout: model.safetensors only, the index removed.
    CHECK_OK(loom_safetensors_write_sharded(dir, 5, ts, 0));
    CHECK(tu_file_exists(p) && !tu_file_exists(index));
    loom_weights_t w = NULL;
    CHECK_OK(loom_weights_open(dir, &w));
    CHECK(loom_weights_count(w) == 5);
    loom_weights_close(w);
    // And back: the stale model.safetensors must go, or readers would prefer it.
    CHECK_OK(loom_safetensors_write_sharded(dir, 5, ts, 40));
    CHECK(!tu_file_exists(p) && tu_file_exists(index));
    // A limit above the total gives one file.
    const char *dir2 = tu_path("single");
    CHECK_OK(loom_safetensors_write_sharded(dir2, 5, ts, 1000));
    snprintf(p, sizeof p, "%s/model.safetensors", dir2);
    CHECK(tu_file_exists(p) && tu_count_entries(dir2, "") == 3);  // ".", "..", the file

    // Duplicate names fail before anything is written.
    ts[4].name = "a";
    const char *dir3 = tu_path("dup");
    CHECK_ERR(loom_safetensors_write_sharded(dir3, 5, ts, 32), LOOM_ERR_INVALID, "'a'", NULL);
    CHECK(tu_count_entries(dir3, "model") == 0);
}

static void test_bad_index(void) {
    const char *dir = tu_path("badindex");
    CHECK(mkdir(dir, 0777) == 0);
    char shard[600], index[600];
    snprintf(shard, sizeof shard, "%s/shard.safetensors", dir);
    snprintf(index, sizeof index, "%s/model.safetensors.index.json", dir);
    const int64_t s1[] = {1};
    loom_named_tensor t = nt("a", LOOM_DTYPE_F32, 1, s1, &scalar_val);
    CHECK_OK(loom_safetensors_write(shard, 1, &t, 0, NULL));

    const char *missing_shard = "{\"weight_map\": {\"a\": \"shard.safetensors\", "
                                "\"b\": \"gone.safetensors\"}}";
    CHECK(tu_write_file(index, missing_shard, strlen(missing_shard)) == 0);
    CHECK_ERR(loom_weights_open(dir, &(loom_weights_t){0}), LOOM_ERR_NOT_FOUND,
              "gone.safetensors", index);

    const char *missing_tensor = "{\"metadata\": {\"total_size\": 4}, \"weight_map\": "
                                 "{\"a\": \"shard.safetensors\", \"b\": \"shard.safetensors\"}}";
    CHECK(tu_write_file(index, missing_tensor, strlen(missing_tensor)) == 0);
    CHECK_ERR(loom_weights_open(index, &(loom_weights_t){0}), LOOM_ERR_FORMAT, "tensor 'b'",
              shard);

    const char *malformed = "{\"weight_map\": {\"a\": ";
    CHECK(tu_write_file(index, malformed, strlen(malformed)) == 0);
    CHECK_ERR(loom_weights_open(dir, &(loom_weights_t){0}), LOOM_ERR_FORMAT, index,
              "not valid JSON");

    const char *no_map = "{\"metadata\": {}}";
    CHECK(tu_write_file(index, no_map, strlen(no_map)) == 0);
    CHECK_ERR(loom_weights_open(dir, &(loom_weights_t){0}), LOOM_ERR_FORMAT, index,
              "weight_map");

    // A shard with a damaged header: the message names the index and the shard.
    const char *bad_shard_index = "{\"weight_map\": {\"a\": \"bad.safetensors\"}}";
    CHECK(tu_write_file(index, bad_shard_index, strlen(bad_shard_index)) == 0);
    char bad[600];
    snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);
    CHECK(tu_write_file(bad, "abc", 3) == 0);
    CHECK_ERR(loom_weights_open(dir, &(loom_weights_t){0}), LOOM_ERR_FORMAT, index, bad);
}

// ---- writing errors ----------------------------------------------------------------------------

static void test_write_errors(void) {
    const int64_t s1[] = {1}, s6[] = {1, 1, 1, 1, 1, 1};
    loom_named_tensor t = nt("a", LOOM_DTYPE_F32, 1, s1, &scalar_val);
    const char *nodir = tu_path("no/such/dir/model.safetensors");
    CHECK_ERR(loom_safetensors_write(nodir, 1, &t, 0, NULL), LOOM_ERR_IO, nodir,
              "No such file or directory");
    CHECK(!tu_file_exists(tu_path("no")));

    // The rename over an existing directory fails: the temp file must be gone.
    const char *adir = tu_path("adir");
    CHECK(mkdir(adir, 0777) == 0);
    CHECK_ERR(loom_safetensors_write(adir, 1, &t, 0, NULL), LOOM_ERR_IO, adir, "rename");
    CHECK(tu_count_entries(tu_scratch, ".tmp.") == 0);

    const char *parentless = tu_path("no/such/dir");
    CHECK_ERR(loom_safetensors_write_sharded(parentless, 1, &t, 0), LOOM_ERR_IO, parentless,
              NULL);

    const char *out = tu_path("invalid.safetensors");
    loom_named_tensor dup[2] = {t, t};
    CHECK_ERR(loom_safetensors_write(out, 2, dup, 0, NULL), LOOM_ERR_INVALID,
              "duplicate tensor name 'a'", out);
    loom_named_tensor bad = nt("x", LOOM_DTYPE_F32, 1, s1, NULL);
    CHECK_ERR(loom_safetensors_write(out, 1, &bad, 0, NULL), LOOM_ERR_INVALID, "'x'", "NULL");
    bad = nt("x", LOOM_DTYPE_F32, 6, s6, &scalar_val);
    bad.ndim = LOOM_MAX_DIMS + 1;
    CHECK_ERR(loom_safetensors_write(out, 1, &bad, 0, NULL), LOOM_ERR_INVALID, "'x'", "shape");
    bad = nt("__metadata__", LOOM_DTYPE_F32, 1, s1, &scalar_val);
    CHECK_ERR(loom_safetensors_write(out, 1, &bad, 0, NULL), LOOM_ERR_INVALID, "reserved", NULL);
    CHECK(!tu_file_exists(out) && tu_count_entries(tu_scratch, ".tmp.") == 0);

    // Zero tensors is a valid (empty) file.
    CHECK_OK(loom_safetensors_write(out, 0, NULL, 0, NULL));
    loom_weights_t w = NULL;
    CHECK_OK(loom_weights_open(out, &w));
    CHECK(loom_weights_count(w) == 0);
    loom_weights_close(w);
}

int main(void) {
    if (tu_scratch_make("st") != 0) {
        perror("mkdtemp");
        return 1;
    }
    test_widening_exhaustive();
    test_narrowing();
    test_round_trip();
    test_name_hint();
    test_python_layout();
    test_bad_headers();
    test_sharded();
    test_bad_index();
    test_write_errors();
    tu_remove_tree(tu_scratch);
    return tu_finish();
}
