// Token files: llm.c .bin files and byte-level text, mapped read-only and served as batches;
// the byte-level tokenizer and the .bin writer.

#include "loom/data.h"

#include "core/core.h"
#include "io/fileio.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

struct loom_tokens {
    char *path;
    loom__mapped_file map;
    const uint8_t *base;  // first token: the text bytes, or the uint16 LE tokens after the header
    int64_t count;
    int is_text;
    int32_t max_token;
};

static int32_t load_le32(const uint8_t *p) {
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                     (uint32_t)p[3] << 24);
}

static void store_le32(uint8_t *p, int32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)((uint32_t)v >> (8 * i));
}

static int32_t token_at(const struct loom_tokens *t, int64_t i) {
    if (t->is_text) return t->base[i];
    return (int32_t)(t->base[2 * i] | t->base[2 * i + 1] << 8);
}

// Validate the llm.c header of a mapped file starting with the magic; set base and count.
static loom_status parse_bin(struct loom_tokens *t) {
    const uint8_t *p = t->map.data;
    size_t size = t->map.size;
    if (size < LOOM_TOKENS_HEADER_BYTES)
        return loom__error(LOOM_ERR_FORMAT, "token file '%s' is %zu bytes, shorter than the "
                           "%d-byte llm.c header (truncated?)", t->path, size,
                           LOOM_TOKENS_HEADER_BYTES);
    int32_t version = load_le32(p + 4), count = load_le32(p + 8);
    if (version != LOOM_TOKENS_VERSION)
        return loom__error(LOOM_ERR_UNSUPPORTED, "token file '%s' has version %d; loom reads "
                           "version %d (llm.c GPT-2 layout with uint16 tokens)", t->path, version,
                           LOOM_TOKENS_VERSION);
    if (count < 0)
        return loom__error(LOOM_ERR_FORMAT, "token file '%s' announces a negative token count "
                           "(%d); corrupt header", t->path, count);
    uint64_t expected = LOOM_TOKENS_HEADER_BYTES + 2 * (uint64_t)count;
    if (size != expected)
        return loom__error(LOOM_ERR_FORMAT, "token file '%s' is %zu bytes, but its header "
                           "announces %d tokens, which take %llu bytes (%d-byte header + 2 bytes "
                           "per token); truncated or corrupt", t->path, size, count,
                           (unsigned long long)expected, LOOM_TOKENS_HEADER_BYTES);
    t->base = p + LOOM_TOKENS_HEADER_BYTES;
    t->count = count;
    return LOOM_OK;
}

static loom_status open_tokens(struct loom_tokens *t, const char *path) {
    if (!(t->path = loom__strdup(path))) return LOOM_ERR_NOMEM;
    LOOM_CHECK(loom__map_file(path, "token file", &t->map));
    if (t->map.size >= 4 && load_le32(t->map.data) == LOOM_TOKENS_MAGIC) {
        LOOM_CHECK(parse_bin(t));
    } else {
        t->is_text = 1;
        t->base = t->map.data;
        t->count = (int64_t)t->map.size;
    }
    if (t->count == 0)
        return loom__error(LOOM_ERR_FORMAT, "token file '%s' is empty (no tokens)", path);
    if (t->count < 2)
        return loom__error(LOOM_ERR_FORMAT, "token file '%s' holds only 1 token; at least 2 are "
                           "needed to form an input and a target", path);
    for (int64_t i = 0; i < t->count; i++) {
        int32_t tok = token_at(t, i);
        if (tok > t->max_token) t->max_token = tok;
    }
    return LOOM_OK;
}

loom_status loom_tokens_open(const char *path, loom_tokens_t *out) {
    if (!out) return loom__error(LOOM_ERR_INVALID, "loom_tokens_open: out is NULL");
    *out = NULL;
    if (!path || !*path) return loom__error(LOOM_ERR_INVALID, "loom_tokens_open: empty path");
    struct loom_tokens *t = loom__calloc(1, sizeof *t);
    if (!t) return LOOM_ERR_NOMEM;
    loom_status st = open_tokens(t, path);
    if (st < 0) {
        loom_tokens_close(t);
        return st;
    }
    *out = t;
    return LOOM_OK;
}

void loom_tokens_close(loom_tokens_t t) {
    if (!t) return;
    loom__unmap_file(&t->map);
    loom__free(t->path);
    loom__free(t);
}

int64_t loom_tokens_count(loom_tokens_t t) { return t ? t->count : 0; }

int32_t loom_tokens_max_token(loom_tokens_t t) { return t ? t->max_token : 0; }

int loom_tokens_is_text(loom_tokens_t t) { return t ? t->is_text : 0; }

// (a * b) mod m for a, b in [0, m), without overflow: double-and-add keeps every
// intermediate below 2m < 2^64.
static int64_t mul_mod(int64_t a, int64_t b, int64_t m) {
    if (a < INT32_MAX && b < INT32_MAX) return a * b % m;
    uint64_t r = 0, x = (uint64_t)a, um = (uint64_t)m;
    for (uint64_t k = (uint64_t)b; k; k >>= 1) {
        if (k & 1) {
            r += x;
            if (r >= um) r -= um;
        }
        x += x;
        if (x >= um) x -= um;
    }
    return (int64_t)r;
}

loom_status loom_tokens_batch(loom_tokens_t t, int64_t step, int B, int T, int32_t *inputs,
                              int32_t *targets) {
    if (!t || !inputs || !targets)
        return loom__error(LOOM_ERR_INVALID, "loom_tokens_batch: NULL tokens or buffer");
    if (B <= 0 || T <= 0 || step < 0)
        return loom__error(LOOM_ERR_INVALID, "loom_tokens_batch on '%s': bad B=%d, T=%d or "
                           "step=%lld (B and T must be positive, step non-negative)", t->path, B,
                           T, (long long)step);
    int64_t n = (int64_t)B * T, count = t->count;
    int64_t pos = mul_mod(step % count, n % count, count);
    int32_t prev = token_at(t, pos);
    for (int64_t k = 0; k < n; k++) {
        if (++pos == count) pos = 0;
        int32_t next = token_at(t, pos);
        inputs[k] = prev;
        targets[k] = next;
        prev = next;
    }
    return LOOM_OK;
}

loom_status loom_tokens_write_bin(const char *path, const uint16_t *tokens, int64_t count) {
    if (!path || !*path) return loom__error(LOOM_ERR_INVALID, "loom_tokens_write_bin: no path");
    if (count < 0 || count > INT32_MAX || (count > 0 && !tokens))
        return loom__error(LOOM_ERR_INVALID, "writing token file '%s': bad token count %lld "
                           "(0..%d with non-NULL tokens)", path, (long long)count, INT32_MAX);
    uint8_t header[LOOM_TOKENS_HEADER_BYTES] = {0};
    store_le32(header, LOOM_TOKENS_MAGIC);
    store_le32(header + 4, LOOM_TOKENS_VERSION);
    store_le32(header + 8, (int32_t)count);
    loom__atomic_file af;
    loom_status st;
    LOOM_CHECK(loom__atomic_open(&af, path));
    LOOM_CHECK_GOTO(loom__atomic_write(&af, header, sizeof header), st, fail);
    uint8_t chunk[8192];
    for (int64_t i = 0; i < count;) {
        size_t k = 0;
        for (; k < sizeof chunk / 2 && i < count; k++, i++) {
            chunk[2 * k] = (uint8_t)(tokens[i] & 0xffu);
            chunk[2 * k + 1] = (uint8_t)(tokens[i] >> 8);
        }
        LOOM_CHECK_GOTO(loom__atomic_write(&af, chunk, 2 * k), st, fail);
    }
    return loom__atomic_commit(&af);
fail:
    loom__atomic_abort(&af);
    return st;
}

int loom_bytes_encode(const char *text, size_t len, int32_t *out, size_t cap) {
    if (len > INT_MAX)
        return loom__error(LOOM_ERR_INVALID, "loom_bytes_encode: %zu bytes exceed INT_MAX", len);
    if (!out) cap = 0;
    size_t n = len < cap ? len : cap;
    for (size_t i = 0; i < n; i++) out[i] = (unsigned char)text[i];
    return (int)len;
}

size_t loom_bytes_decode(int32_t token, char *buf, size_t cap) {
    char piece[24];
    size_t n;
    if (token >= 0 && token <= 255) {
        piece[0] = (char)(unsigned char)token;
        n = 1;
    } else {
        n = (size_t)snprintf(piece, sizeof piece, "<|%d|>", (int)token);
    }
    if (!buf || n > cap) return 0;
    memcpy(buf, piece, n);
    return n;
}
