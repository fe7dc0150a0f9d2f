// Token data for training: llm.c token files (.bin) or plain text read through the byte-level
// tokenizer, served as (inputs, targets) batches; plus that tokenizer and a .bin writer.

#ifndef LOOM_DATA_H
#define LOOM_DATA_H

#include "loom/status.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Magic and version of the llm.c token file: 256 little-endian int32 header words
// (magic, version, token count, 0...) followed by `count` uint16 tokens.
#define LOOM_TOKENS_MAGIC 20240520
#define LOOM_TOKENS_VERSION 1
#define LOOM_TOKENS_HEADER_BYTES 1024

// A token stream mapped read-only from one file.
typedef struct loom_tokens *loom_tokens_t;

// Open `path`: an llm.c token file when it starts with LOOM_TOKENS_MAGIC, otherwise plain text
// tokenized one token per byte. Errors: LOOM_ERR_NOT_FOUND / LOOM_ERR_IO (cannot open),
// LOOM_ERR_FORMAT (size does not match the header count, fewer than 2 tokens, empty file),
// LOOM_ERR_UNSUPPORTED (header version other than 1). Messages name the file.
loom_status loom_tokens_open(const char *path, loom_tokens_t *out);
// Unmap and free. NULL is fine.
void loom_tokens_close(loom_tokens_t t);
// Number of tokens (0 for NULL).
int64_t loom_tokens_count(loom_tokens_t t);
// Largest token id in the file, to check against the model's vocabulary size.
int32_t loom_tokens_max_token(loom_tokens_t t);
// 1 when the file was read as byte-level text, 0 for a token file.
int loom_tokens_is_text(loom_tokens_t t);
// Batch `step` (>= 0), llm.c order without shuffling: the B*T+1 tokens starting at position
// (step*B*T) mod count, wrapping to the start of the file, laid out as B rows of T:
// inputs[b*T+t] = tok[start+b*T+t], targets[b*T+t] = tok[start+b*T+t+1] (indices mod count).
// Both buffers hold B*T int32. LOOM_ERR_INVALID for bad arguments.
loom_status loom_tokens_batch(loom_tokens_t t, int64_t step, int B, int T, int32_t *inputs,
                              int32_t *targets);
// Write `count` tokens (count <= INT32_MAX) as an llm.c token file, atomically
// ("<path>.tmp.<pid>" renamed over `path`). LOOM_ERR_IO names the path on failure.
loom_status loom_tokens_write_bin(const char *path, const uint16_t *tokens, int64_t count);

// ---- byte-level tokenizer: token id = byte value (0..255) -----------------------------------

// Encode `len` bytes of `text`, writing min(len, cap) tokens to `out` (may be NULL when cap is
// 0). Returns the number of tokens the whole text makes (= len), or LOOM_ERR_INVALID (negative)
// when len exceeds INT_MAX.
int loom_bytes_encode(const char *text, size_t len, int32_t *out, size_t cap);
// Write the text of `token` to buf (no terminator): one byte for 0..255, "<|id|>" for any other
// id. Returns the bytes written, or 0 when the piece does not fit in `cap` (nothing written).
size_t loom_bytes_decode(int32_t token, char *buf, size_t cap);

#ifdef __cplusplus
}
#endif
#endif // LOOM_DATA_H
