// Tests of token data: llm.c .bin files (write, layout, batches including wrap-around), plain
// text through the byte-level tokenizer, and the error paths of opening token files.

#include "io-testutil.h"

#include "loom/data.h"

#include <limits.h>

static int32_t le32_at(const uint8_t *p) {
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                     (uint32_t)p[3] << 24);
}

// Check batch `step` against tokens[(start + k) mod count], start = step*B*T mod count.
static void check_batch(loom_tokens_t t, const int32_t *tokens, int64_t count, int64_t step,
                        int B, int T) {
    int32_t *in = malloc(sizeof(int32_t) * (size_t)(B * T));
    int32_t *tg = malloc(sizeof(int32_t) * (size_t)(B * T));
    CHECK_OK(loom_tokens_batch(t, step, B, T, in, tg));
    int64_t start = step * B * T % count;
    int bad = 0;
    for (int b = 0; b < B; b++)
        for (int i = 0; i < T; i++) {
            int64_t k = start + (int64_t)b * T + i;
            bad += in[b * T + i] != tokens[k % count];
            bad += tg[b * T + i] != tokens[(k + 1) % count];
        }
    CHECK_MSG(bad == 0, "step %lld (B=%d, T=%d): %d wrong tokens", (long long)step, B, T, bad);
    free(in);
    free(tg);
}

static void test_bin(void) {
    enum { N = 1000 };
    uint16_t tok16[N];
    int32_t tok[N];
    int32_t max = 0;
    for (int i = 0; i < N; i++) {
        tok16[i] = (uint16_t)((i * 7919 + 13) % 50257);
        tok[i] = tok16[i];
        if (tok[i] > max) max = tok[i];
    }
    const char *path = tu_path("train.bin");
    CHECK_OK(loom_tokens_write_bin(path, tok16, N));
    CHECK(tu_count_entries(tu_scratch, ".tmp.") == 0);

    // Layout: 256 int32 header words (magic, version, count), then uint16 LE tokens.
    size_t size = 0;
    uint8_t *bytes = tu_read_file(path, &size);
    CHECK(bytes && size == 1024 + 2 * N);
    if (bytes && size == 1024 + 2 * N) {
        CHECK(le32_at(bytes) == 20240520 && le32_at(bytes + 4) == 1 && le32_at(bytes + 8) == N);
        CHECK(le32_at(bytes + 12) == 0 && le32_at(bytes + 1020) == 0);
        CHECK(bytes[1024 + 2 * 5] == (tok16[5] & 0xff) && bytes[1024 + 2 * 5 + 1] == tok16[5] >> 8);
    }
    free(bytes);

    loom_tokens_t t = NULL;
    CHECK_OK(loom_tokens_open(path, &t));
    CHECK(loom_tokens_count(t) == N && !loom_tokens_is_text(t) && loom_tokens_max_token(t) == max);
    check_batch(t, tok, N, 0, 4, 8);
    check_batch(t, tok, N, 1, 4, 8);
    check_batch(t, tok, N, 31, 4, 8);       // starts at 992: wraps to the file start
    check_batch(t, tok, N, 1000003, 4, 8);  // large step
    check_batch(t, tok, N, 0, 3, 500);      // one batch longer than the file
    // Spot values, written out: step 0 row 1 starts at token 8; step 31 wraps after 8 tokens.
    int32_t in[32], tg[32];
    CHECK_OK(loom_tokens_batch(t, 0, 4, 8, in, tg));
    CHECK(in[8] == (8 * 7919 + 13) % 50257 && tg[7] == in[8]);
    CHECK_OK(loom_tokens_batch(t, 31, 4, 8, in, tg));
    CHECK(in[0] == tok[992] && in[7] == tok[999] && tg[7] == tok[0] && in[8] == tok[0]);
    CHECK(tg[31] == tok[24]);
    CHECK_ERR(loom_tokens_batch(t, 0, 0, 8, in, tg), LOOM_ERR_INVALID, path, NULL);
    CHECK_ERR(loom_tokens_batch(t, -1, 4, 8, in, tg), LOOM_ERR_INVALID, path, NULL);
    loom_tokens_close(t);
    loom_tokens_close(NULL);

    // A tiny file: every batch wraps several times.
    const uint16_t tiny16[3] = {5, 6, 7};
    const int32_t tiny[3] = {5, 6, 7};
    const char *tiny_path = tu_path("tiny.bin");
    CHECK_OK(loom_tokens_write_bin(tiny_path, tiny16, 3));
    CHECK_OK(loom_tokens_open(tiny_path, &t));
    check_batch(t, tiny, 3, 0, 2, 4);
    check_batch(t, tiny, 3, 5, 2, 4);
    loom_tokens_close(t);
}

static void test_text(void) {
    const char text[] = "hello w\xe2\x82\xac!\n";  // includes a 3-byte UTF-8 character
    const int64_t n = (int64_t)sizeof text - 1;
    const char *path = tu_path("input.txt");
    CHECK(tu_write_file(path, text, (size_t)n) == 0);
    int32_t tok[16];
    for (int64_t i = 0; i < n; i++) tok[i] = (unsigned char)text[i];
    loom_tokens_t t = NULL;
    CHECK_OK(loom_tokens_open(path, &t));
    CHECK(loom_tokens_count(t) == n && loom_tokens_is_text(t) && loom_tokens_max_token(t) == 0xe2);
    check_batch(t, tok, n, 0, 2, 3);
    check_batch(t, tok, n, 3, 2, 3);  // wraps
    int32_t in[6], tg[6];
    CHECK_OK(loom_tokens_batch(t, 0, 2, 3, in, tg));
    CHECK(in[0] == 'h' && tg[0] == 'e' && in[3] == 'l' && tg[5] == 'w');
    loom_tokens_close(t);
}

static void test_tokenizer(void) {
    int32_t out[8];
    CHECK(loom_bytes_encode("a\xff\x00z", 4, out, 8) == 4);
    CHECK(out[0] == 'a' && out[1] == 255 && out[2] == 0 && out[3] == 'z');
    out[2] = -1;
    CHECK(loom_bytes_encode("abcd", 4, out, 2) == 4 && out[0] == 'a' && out[1] == 'b' &&
          out[2] == -1);
    CHECK(loom_bytes_encode("abc", 3, NULL, 0) == 3);
    CHECK(loom_bytes_encode("", 0, out, 8) == 0);
    CHECK(loom_bytes_encode("x", (size_t)INT_MAX + 1, NULL, 0) == LOOM_ERR_INVALID);

    char buf[16];
    CHECK(loom_bytes_decode('A', buf, sizeof buf) == 1 && buf[0] == 'A');
    CHECK(loom_bytes_decode(0, buf, 1) == 1 && buf[0] == '\0');
    CHECK(loom_bytes_decode(255, buf, 1) == 1 && (unsigned char)buf[0] == 255);
    CHECK(loom_bytes_decode(50256, buf, sizeof buf) == 9 && !memcmp(buf, "<|50256|>", 9));
    CHECK(loom_bytes_decode(-3, buf, sizeof buf) == 6 && !memcmp(buf, "<|-3|>", 6));
    CHECK(loom_bytes_decode(300, buf, 6) == 0);  // "<|300|>" needs 7
    CHECK(loom_bytes_decode('A', buf, 0) == 0);
    // Round trip of every byte.
    int bad = 0;
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        int32_t id;
        bad += loom_bytes_encode(&c, 1, &id, 1) != 1 || id != b;
        bad += loom_bytes_decode(id, buf, sizeof buf) != 1 || (unsigned char)buf[0] != b;
    }
    CHECK(bad == 0);
}

static void test_errors(void) {
    const uint16_t toks[4] = {1, 2, 3, 4};
    const char *path = tu_path("bad.bin");
    size_t size = 0;

    // Version other than 1.
    CHECK_OK(loom_tokens_write_bin(path, toks, 4));
    uint8_t *bytes = tu_read_file(path, &size);
    CHECK(bytes && size == 1032);
    if (!bytes) return;
    bytes[4] = 2;
    CHECK(tu_write_file(path, bytes, size) == 0);
    loom_tokens_t t = (loom_tokens_t)NULL;
    CHECK_ERR(loom_tokens_open(path, &t), LOOM_ERR_UNSUPPORTED, path, "version 2");
    CHECK(t == NULL);

    // Truncated: one byte short of the announced 4 tokens.
    bytes[4] = 1;
    CHECK(tu_write_file(path, bytes, size - 1) == 0);
    CHECK_ERR(loom_tokens_open(path, &t), LOOM_ERR_FORMAT, path, "is 1031 bytes");
    CHECK(strstr(loom_last_error(), "1032 bytes") != NULL);
    // Only part of the header.
    CHECK(tu_write_file(path, bytes, 100) == 0);
    CHECK_ERR(loom_tokens_open(path, &t), LOOM_ERR_FORMAT, path, "header");
    // Negative count.
    bytes[11] = 0x80;
    CHECK(tu_write_file(path, bytes, size) == 0);
    CHECK_ERR(loom_tokens_open(path, &t), LOOM_ERR_FORMAT, path, "negative");
    // Too few tokens.
    CHECK_OK(loom_tokens_write_bin(path, toks, 1));
    CHECK_ERR(loom_tokens_open(path, &t), LOOM_ERR_FORMAT, path, "at least 2");
    free(bytes);

    const char *missing = tu_path("missing.bin");
    CHECK_ERR(loom_tokens_open(missing, &t), LOOM_ERR_NOT_FOUND, missing, NULL);
    const char *empty = tu_path("empty.txt");
    CHECK(tu_write_file(empty, "", 0) == 0);
    CHECK_ERR(loom_tokens_open(empty, &t), LOOM_ERR_FORMAT, empty, "empty");
    const char *one = tu_path("one.txt");
    CHECK(tu_write_file(one, "x", 1) == 0);
    CHECK_ERR(loom_tokens_open(one, &t), LOOM_ERR_FORMAT, one, "1 token");
    CHECK_ERR(loom_tokens_open(tu_scratch, &t), LOOM_ERR_IO, tu_scratch, "not a regular file");
    CHECK(t == NULL);

    const char *nodir = tu_path("no/such/dir/x.bin");
    CHECK_ERR(loom_tokens_write_bin(nodir, toks, 4), LOOM_ERR_IO, nodir, NULL);
    CHECK_ERR(loom_tokens_write_bin(path, toks, -1), LOOM_ERR_INVALID, path, NULL);
    CHECK(tu_count_entries(tu_scratch, ".tmp.") == 0);
}

int main(void) {
    if (tu_scratch_make("data") != 0) {
        perror("mkdtemp");
        return 1;
    }
    test_bin();
    test_text();
    test_tokenizer();
    test_errors();
    tu_remove_tree(tu_scratch);
    return tu_finish();
}
