// Tests of sharded checkpoints: simulated ranks write split and replicated slices, blocks are
// read back under other plans, merged into a Hugging Face style directory and read again, and
// every error path is checked for its status and for a message naming the shard and tensor.

#include "io-testutil.h"

#include "loom/checkpoint.h"
#include "loom/safetensors.h"

#include <jansson.h>

enum { WORLD = 4, STEP = 42 };
static const char *const CONFIG = "{\"model_type\": \"gpt2\", \"n_layer\": 2}";
static const char *const EXTRA = "{\"data_position\": 1234}";

// How the 4 ranks hold a tensor.
enum plan {
    ROWS_2_REPLICATED_2,  // ranks 0 and 1 hold rows [0, 3) and [3, 6); ranks 2 and 3 the same
    REPLICATED,           // every rank holds it all
    COLS_4,               // rank r holds columns [bounds[r], bounds[r + 1]) (uneven)
    LAST_RANK_ONLY,       // only rank 3
};
static const int64_t COL_BOUNDS[WORLD + 1] = {0, 2, 3, 5, 6};

typedef struct global_tensor {
    const char *name;
    int id;  // element i (row-major) of the global tensor is id * 1000 + i + 0.25
    int ndim;
    int64_t shape[LOOM_MAX_DIMS];
    enum plan plan;
} global_tensor;

static const global_tensor GLOBALS[] = {
    {"A", 1, 2, {6, 8}, ROWS_2_REPLICATED_2},
    {"B", 2, 1, {8}, REPLICATED},
    {"C", 3, 2, {4, 6}, COLS_4},
    {"S", 4, 0, {0}, LAST_RANK_ONLY},
    {"optim.m.A", 5, 2, {6, 8}, ROWS_2_REPLICATED_2},
    {"optim.v.A", 6, 2, {6, 8}, ROWS_2_REPLICATED_2},
};
enum { N_GLOBALS = sizeof GLOBALS / sizeof *GLOBALS };
static const global_tensor CUBE = {"D", 7, 3, {5, 7, 9}, REPLICATED};  // the resharding test's

static size_t numel(const global_tensor *g) {
    size_t n = 1;
    for (int d = 0; d < g->ndim; d++) n *= (size_t)g->shape[d];
    return n;
}

static const global_tensor *global_named(const char *name) {
    for (int i = 0; i < N_GLOBALS; i++)
        if (!strcmp(GLOBALS[i].name, name)) return &GLOBALS[i];
    return &CUBE;
}

// Block [offset, offset + shape) of g with its values, as a slice to write (data malloc'd).
static loom_shard_tensor slice_of(const global_tensor *g, const int64_t *offset,
                                  const int64_t *shape) {
    loom_shard_tensor t = {.name = g->name, .ndim = g->ndim};
    int64_t n = 1;
    for (int d = 0; d < g->ndim; d++) {
        t.global_shape[d] = g->shape[d];
        t.offset[d] = offset[d];
        t.shape[d] = shape[d];
        n *= shape[d];
    }
    float *data = malloc((size_t)(n ? n : 1) * sizeof *data);
    for (int64_t i = 0; i < n; i++) {
        int64_t rest = i, global_index = 0, stride = 1;
        for (int d = g->ndim - 1; d >= 0; d--) {
            global_index += (offset[d] + rest % shape[d]) * stride;
            rest /= shape[d];
            stride *= g->shape[d];
        }
        data[i] = (float)g->id * 1000 + (float)global_index + 0.25f;
    }
    t.data = data;
    return t;
}

// The slices one rank writes.
typedef struct rank_shard {
    int n;
    loom_shard_tensor t[N_GLOBALS];
} rank_shard;

static void rank_shard_make(rank_shard *s, int rank) {
    s->n = 0;
    for (int i = 0; i < N_GLOBALS; i++) {
        const global_tensor *g = &GLOBALS[i];
        int64_t offset[LOOM_MAX_DIMS] = {0}, shape[LOOM_MAX_DIMS];
        memcpy(shape, g->shape, sizeof shape);
        if (g->plan == ROWS_2_REPLICATED_2) {
            offset[0] = (rank % 2) * 3;
            shape[0] = 3;
        } else if (g->plan == COLS_4) {
            offset[1] = COL_BOUNDS[rank];
            shape[1] = COL_BOUNDS[rank + 1] - COL_BOUNDS[rank];
        } else if (g->plan == LAST_RANK_ONLY && rank != WORLD - 1) {
            continue;
        }
        s->t[s->n++] = slice_of(g, offset, shape);
    }
}

static void rank_shard_free(rank_shard *s) {
    for (int i = 0; i < s->n; i++) free((void *)s->t[i].data);
    s->n = 0;
}

static loom_shard_tensor *find_slice(rank_shard *s, const char *name) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->t[i].name, name)) return &s->t[i];
    return NULL;
}

static int write_rank(const char *dir, int rank, int world, int64_t step, const rank_shard *s) {
    loom_shard_info info = {rank, world, step, CONFIG, EXTRA};
    return loom_checkpoint_write_shard(dir, &info, s->n, s->t);
}

// Write the standard slices of the ranks in [0, WORLD) except `skip` (-1: none).
static int write_ranks(const char *dir, int skip) {
    int st = 0;
    for (int r = 0; r < WORLD && st == 0; r++) {
        if (r == skip) continue;
        rank_shard s;
        rank_shard_make(&s, r);
        st = write_rank(dir, r, WORLD, STEP, &s);
        rank_shard_free(&s);
    }
    return st;
}

static int write_checkpoint(const char *dir) {
    int st = write_ranks(dir, -1);
    return st ? st : loom_checkpoint_commit(dir, WORLD, STEP);
}

// In a static buffer: copy it before calling again.
static const char *shard_path(const char *dir, int rank, int world) {
    static char buf[600];
    snprintf(buf, sizeof buf, "%s/shard-%05d-of-%05d.safetensors", dir, rank, world);
    return buf;
}

static const char *path_in(const char *dir, const char *name) {
    static char buf[600];
    snprintf(buf, sizeof buf, "%s/%s", dir, name);
    return buf;
}

// CRC-32 by its definition (reflected polynomial 0xEDB88320), independent of zlib.
static uint32_t ref_crc32(const void *data, size_t n) {
    const uint8_t *p = data;
    uint32_t crc = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1)));
    }
    return ~crc;
}

// Read block [offset, offset + shape) of `name` and compare it bit for bit with the formula.
static void check_block(loom_checkpoint_t c, const char *name, const int64_t *offset,
                        const int64_t *shape, int line) {
    const global_tensor *g = global_named(name);
    loom_shard_tensor want = slice_of(g, offset, shape);
    int64_t n = 1;
    for (int d = 0; d < g->ndim; d++) n *= shape[d];
    float *got = malloc((size_t)(n ? n : 1) * sizeof *got);
    int st = loom_checkpoint_read(c, name, g->ndim, offset, shape, got);
    CHECK_MSG(st == 0, "line %d: reading %s: %s", line, name, loom_last_error());
    CHECK_MSG(st != 0 || !memcmp(got, want.data, (size_t)n * sizeof *got),
              "line %d: block of %s differs", line, name);
    free(got);
    free((void *)want.data);
}
#define CHECK_BLOCK(c, name, ...)                                                \
    do {                                                                         \
        const int64_t blk_[2][LOOM_MAX_DIMS] = __VA_ARGS__;                      \
        check_block(c, name, blk_[0], blk_[1], __LINE__);                        \
    } while (0)

// Every global tensor in full, and blocks that cut across the writers' slices.
static void check_reads(loom_checkpoint_t c) {
    for (int i = 0; i < N_GLOBALS; i++) {
        int64_t zeros[LOOM_MAX_DIMS] = {0};
        check_block(c, GLOBALS[i].name, zeros, GLOBALS[i].shape, __LINE__);
    }
    CHECK_BLOCK(c, "A", {{1, 2}, {4, 6}});  // rows 1..4 (two shards), cols 2..7
    CHECK_BLOCK(c, "A", {{0, 5}, {6, 3}});  // a column block: a plan the writers did not use
    CHECK_BLOCK(c, "A", {{3, 0}, {1, 8}});
    CHECK_BLOCK(c, "B", {{3}, {4}});
    CHECK_BLOCK(c, "C", {{1, 1}, {2, 5}});  // four shards
    CHECK_BLOCK(c, "C", {{0, 2}, {4, 1}});  // exactly rank 1's slice
    CHECK_BLOCK(c, "optim.v.A", {{2, 0}, {2, 8}});
    CHECK_BLOCK(c, "optim.m.A", {{5, 7}, {1, 1}});
    CHECK_BLOCK(c, "A", {{6, 0}, {0, 8}});  // empty
    // NULL offset and shape: the whole tensor.
    float all[48], want[48];
    int64_t zeros[2] = {0, 0};
    loom_shard_tensor ref = slice_of(&GLOBALS[0], zeros, GLOBALS[0].shape);
    memcpy(want, ref.data, sizeof want);
    free((void *)ref.data);
    CHECK_OK(loom_checkpoint_read(c, "A", 2, NULL, NULL, all));
    CHECK(!memcmp(all, want, sizeof all));
}

// Metadata and names common to the sharded and the merged checkpoint.
static void check_catalog(loom_checkpoint_t c) {
    CHECK(loom_checkpoint_step(c) == STEP);
    CHECK(loom_checkpoint_config_json(c) && !strcmp(loom_checkpoint_config_json(c), CONFIG));
    CHECK(loom_checkpoint_extra_json(c) && !strcmp(loom_checkpoint_extra_json(c), EXTRA));
    CHECK(loom_checkpoint_count(c) == N_GLOBALS);
    for (int i = 0; i < N_GLOBALS; i++) {  // GLOBALS is in name order
        int ndim = -1;
        int64_t shape[LOOM_MAX_DIMS] = {0};
        const char *name = loom_checkpoint_name(c, i, &ndim, shape);
        CHECK_MSG(name && !strcmp(name, GLOBALS[i].name), "tensor %d is %s", i, tu_str(name));
        CHECK(ndim == GLOBALS[i].ndim);
        CHECK(!memcmp(shape, GLOBALS[i].shape, (size_t)ndim * sizeof *shape));
        CHECK(loom_checkpoint_has(c, GLOBALS[i].name));
    }
    CHECK(loom_checkpoint_name(c, N_GLOBALS, NULL, NULL) == NULL);
    CHECK(!loom_checkpoint_has(c, "Z"));
}

// ---- the happy path --------------------------------------------------------------------------

static void test_files(const char *dir) {
    json_error_t jerr;
    json_t *root = json_load_file(path_in(dir, "checkpoint.json"), 0, &jerr);
    CHECK_MSG(root, "checkpoint.json: %s", jerr.text);
    CHECK(!strcmp(tu_str(json_string_value(json_object_get(root, "format"))),
                  "loom-checkpoint-1"));
    CHECK(json_integer_value(json_object_get(root, "world")) == WORLD);
    CHECK(json_integer_value(json_object_get(root, "step")) == STEP);
    json_t *shards = json_object_get(root, "shards");
    CHECK(json_array_size(shards) == WORLD);
    CHECK(!strcmp(tu_str(json_string_value(json_array_get(shards, 2))),
                  "shard-00002-of-00004.safetensors"));
    json_decref(root);

    // Shard 1 as a plain safetensors file.
    loom_weights_t w = NULL;
    CHECK_OK(loom_weights_open(shard_path(dir, 1, WORLD), &w));
    CHECK(loom_weights_count(w) == 5);  // A, B, C and A's two optimizer states; no S
    CHECK(!strcmp(tu_str(loom_weights_metadata(w, "loom.format")), "loom-shard-1"));
    CHECK(!strcmp(tu_str(loom_weights_metadata(w, "loom.rank")), "1"));
    CHECK(!strcmp(tu_str(loom_weights_metadata(w, "loom.world")), "4"));
    CHECK(!strcmp(tu_str(loom_weights_metadata(w, "loom.step")), "42"));
    CHECK(!strcmp(tu_str(loom_weights_metadata(w, "loom.config")), CONFIG));
    CHECK(!strcmp(tu_str(loom_weights_metadata(w, "loom.extra")), EXTRA));
    json_t *slices = json_loads(tu_str(loom_weights_metadata(w, "loom.slices")), 0, NULL);
    json_t *crcs = json_loads(tu_str(loom_weights_metadata(w, "loom.crc32")), 0, NULL);
    json_t *c_slice = json_object_get(slices, "C");
    CHECK(json_integer_value(json_array_get(json_object_get(c_slice, "global_shape"), 1)) == 6);
    CHECK(json_integer_value(json_array_get(json_object_get(c_slice, "offset"), 1)) == 2);
    json_t *a_slice = json_object_get(slices, "A");
    CHECK(json_integer_value(json_array_get(json_object_get(a_slice, "offset"), 0)) == 3);
    rank_shard s;
    rank_shard_make(&s, 1);
    const loom_shard_tensor *a = find_slice(&s, "A");
    CHECK(json_integer_value(json_object_get(crcs, "A")) ==
          (json_int_t)ref_crc32(a->data, 3 * 8 * sizeof(float)));
    float local[24];
    int64_t local_shape[2] = {3, 8};
    CHECK_OK(loom_weights_read_f32(w, "A", 2, local_shape, local));
    CHECK(!memcmp(local, a->data, sizeof local));
    rank_shard_free(&s);
    json_decref(slices);
    json_decref(crcs);
    loom_weights_close(w);
}

static const char *add_transformer_prefix(const char *name, char *buf, size_t cap) {
    snprintf(buf, cap, "transformer.%s", name);
    return buf;
}

// The merged directory as plain safetensors files; `prefix` is what file names start with.
static void check_merged_files(const char *dir, const char *prefix) {
    char name[128];
    size_t n;
    char *config = (char *)tu_read_file(path_in(dir, "config.json"), &n);
    CHECK(config && n == strlen(CONFIG) && !memcmp(config, CONFIG, n));
    free(config);

    loom_weights_t model = NULL, optim = NULL;
    CHECK_OK(loom_weights_open(dir, &model));
    CHECK(loom_weights_count(model) == 4);  // A, B, C, S
    CHECK(!strcmp(tu_str(loom_weights_metadata(model, "format")), "pt"));
    for (int i = 0; i < N_GLOBALS; i++) {
        const global_tensor *g = &GLOBALS[i];
        if (!strncmp(g->name, "optim.", 6)) continue;
        int64_t zeros[LOOM_MAX_DIMS] = {0};
        loom_shard_tensor want = slice_of(g, zeros, g->shape);
        float got[48];
        snprintf(name, sizeof name, "%s%s", prefix, g->name);
        CHECK_OK(loom_weights_read_f32(model, name, g->ndim, g->shape, got));
        CHECK_MSG(!memcmp(got, want.data, numel(g) * sizeof(float)), "merged %s differs", name);
        free((void *)want.data);
    }
    CHECK_OK(loom_weights_open(path_in(dir, "optimizer.safetensors"), &optim));
    CHECK(loom_weights_count(optim) == 2);
    CHECK(!strcmp(tu_str(loom_weights_metadata(optim, "step")), "42"));
    CHECK(!strcmp(tu_str(loom_weights_metadata(optim, "loom.extra")), EXTRA));
    snprintf(name, sizeof name, "optim.v.%sA", prefix);
    CHECK_MSG(loom_weights_has(optim, name), "no %s", name);
    CHECK((loom_weights_metadata(optim, "loom.names") != NULL) == (*prefix != '\0'));
    loom_weights_close(model);
    loom_weights_close(optim);
}

static void test_round_trip(void) {
    const char *dir = tu_path("run"), *merged = tu_path("merged"), *renamed = tu_path("renamed");
    CHECK_OK(write_checkpoint(dir));
    test_files(dir);

    loom_checkpoint_t c = NULL;
    CHECK_OK(loom_checkpoint_open(dir, &c));
    if (c) {
        check_catalog(c);
        check_reads(c);
    }
    loom_checkpoint_close(c);

    // Merged, then read again the same way (resharding from a merged checkpoint).
    CHECK_OK(loom_checkpoint_merge(dir, merged, NULL));
    check_merged_files(merged, "");
    c = NULL;
    CHECK_OK(loom_checkpoint_open(merged, &c));
    if (c) {
        check_catalog(c);
        check_reads(c);
    }
    loom_checkpoint_close(c);

    // File names with the GPT-2 prefix; the checkpoint still answers to loom's names.
    CHECK_OK(loom_checkpoint_merge(dir, renamed, add_transformer_prefix));
    check_merged_files(renamed, "transformer.");
    c = NULL;
    CHECK_OK(loom_checkpoint_open(renamed, &c));
    if (c) {
        check_catalog(c);
        check_reads(c);
    }
    loom_checkpoint_close(c);
    // A merged checkpoint merges again (into itself: the files are replaced atomically).
    CHECK_OK(loom_checkpoint_merge(renamed, renamed, add_transformer_prefix));
    check_merged_files(renamed, "transformer.");
}

// A 3-D tensor split over dims 0 and 2 in a 2 x 3 grid of uneven blocks (ranks 0-5), plus one
// odd block overlapping several (rank 6): pseudo-random blocks must all read back exactly.
static void test_resharding(void) {
    const char *dir = tu_path("cube");
    const int64_t rows[3] = {0, 2, 5}, depth[4] = {0, 4, 5, 9};
    int rank = 0;
    for (int i = 0; i < 2; i++) {
        for (int k = 0; k < 3; k++, rank++) {
            int64_t offset[3] = {rows[i], 0, depth[k]};
            int64_t shape[3] = {rows[i + 1] - rows[i], 7, depth[k + 1] - depth[k]};
            loom_shard_tensor t = slice_of(&CUBE, offset, shape);
            loom_shard_info info = {rank, 7, 3, NULL, NULL};
            CHECK_OK(loom_checkpoint_write_shard(dir, &info, 1, &t));
            free((void *)t.data);
        }
    }
    loom_shard_tensor odd = slice_of(&CUBE, (const int64_t[]){1, 2, 3}, (const int64_t[]){3, 4, 5});
    loom_shard_info info = {6, 7, 3, NULL, NULL};
    CHECK_OK(loom_checkpoint_write_shard(dir, &info, 1, &odd));
    free((void *)odd.data);
    CHECK_OK(loom_checkpoint_commit(dir, 7, 3));

    loom_checkpoint_t c = NULL;
    CHECK_OK(loom_checkpoint_open(dir, &c));
    if (!c) return;
    CHECK(loom_checkpoint_config_json(c) == NULL && loom_checkpoint_extra_json(c) == NULL);
    uint32_t seed = 12345;
    int before = tu_failed;
    for (int trial = 0; trial < 300 && tu_failed == before; trial++) {
        int64_t offset[3], shape[3];
        for (int d = 0; d < 3; d++) {
            seed = seed * 1664525u + 1013904223u;
            int64_t a = (seed >> 8) % (uint32_t)(CUBE.shape[d] + 1);
            seed = seed * 1664525u + 1013904223u;
            int64_t b = (seed >> 8) % (uint32_t)(CUBE.shape[d] + 1);
            offset[d] = a < b ? a : b;
            shape[d] = (a < b ? b : a) - offset[d];
        }
        check_block(c, "D", offset, shape, __LINE__);
    }
    loom_checkpoint_close(c);
    char merged[300];
    snprintf(merged, sizeof merged, "%s-merged", dir);
    CHECK_OK(loom_checkpoint_merge(dir, merged, NULL));  // the odd replica agrees
}

// ---- errors ----------------------------------------------------------------------------------

// Flip one bit of byte `at` of `path`; at < 0 counts from the start of tensor `tensor`'s data.
static void flip_byte(const char *path, const char *tensor, long at) {
    size_t n;
    uint8_t *bytes = tu_read_file(path, &n);
    CHECK(bytes && n > 8);
    if (!bytes) return;
    size_t pos = (size_t)at;
    if (tensor) {
        uint64_t header_len = 0;
        for (int i = 7; i >= 0; i--) header_len = header_len << 8 | bytes[i];
        json_t *header = json_loadb((const char *)bytes + 8, header_len, 0, NULL);
        json_t *offsets = json_object_get(json_object_get(header, tensor), "data_offsets");
        pos = 8 + header_len + (size_t)json_integer_value(json_array_get(offsets, 0)) +
              (size_t)at;
        json_decref(header);
    }
    CHECK(pos < n);
    if (pos < n) bytes[pos] ^= 0x10;
    CHECK(tu_write_file(path, bytes, n) == 0);
    free(bytes);
}

static void test_incomplete(void) {
    const char *dir = tu_path("incomplete");
    loom_checkpoint_t c = NULL;
    CHECK_OK(write_ranks(dir, -1));
    CHECK_ERR(loom_checkpoint_open(dir, &c), LOOM_ERR_NOT_FOUND, "incomplete", "checkpoint.json");
    CHECK(c == NULL);
    CHECK_ERR(loom_checkpoint_merge(dir, tu_path("never"), NULL), LOOM_ERR_NOT_FOUND,
              "incomplete", NULL);
    CHECK(!tu_file_exists(tu_path("never")));
    // Committed, then a rank starts overwriting it: incomplete again until the next commit.
    CHECK_OK(loom_checkpoint_commit(dir, WORLD, STEP));
    CHECK_OK(write_ranks(dir, 1));
    CHECK(!tu_file_exists(path_in(dir, "checkpoint.json")));
    CHECK_ERR(loom_checkpoint_open(dir, &c), LOOM_ERR_NOT_FOUND, "incomplete", NULL);
    CHECK_OK(loom_checkpoint_commit(dir, WORLD, STEP));
    CHECK_OK(loom_checkpoint_open(dir, &c));
    loom_checkpoint_close(c);
    CHECK_ERR(loom_checkpoint_open(tu_path("nowhere"), &c), LOOM_ERR_NOT_FOUND, "nowhere", NULL);
    CHECK_ERR(loom_checkpoint_open(shard_path(dir, 0, WORLD), &c), LOOM_ERR_INVALID,
              "not a directory", NULL);
}

static void test_missing_shard(void) {
    const char *dir = tu_path("missing");
    loom_checkpoint_t c = NULL;
    CHECK_OK(write_ranks(dir, 2));
    CHECK_ERR(loom_checkpoint_commit(dir, WORLD, STEP), LOOM_ERR_NOT_FOUND,
              "shard-00002-of-00004.safetensors", "rank 2");
    CHECK(!tu_file_exists(path_in(dir, "checkpoint.json")));
    CHECK_OK(write_checkpoint(dir));
    CHECK(unlink(shard_path(dir, 2, WORLD)) == 0);
    CHECK_ERR(loom_checkpoint_open(dir, &c), LOOM_ERR_NOT_FOUND,
              "shard-00002-of-00004.safetensors", NULL);
    CHECK(c == NULL);
}

static void test_damaged(void) {
    const char *dir = tu_path("damaged");
    loom_checkpoint_t c = NULL;
    float block[48];
    CHECK_OK(write_checkpoint(dir));
    flip_byte(shard_path(dir, 1, WORLD), "A", 21);
    CHECK_OK(loom_checkpoint_open(dir, &c));  // checksums are checked on first read
    if (c) {
        CHECK_BLOCK(c, "A", {{0, 0}, {3, 8}});  // rows held by shard 0 only
        CHECK_BLOCK(c, "B", {{0}, {8}});
        CHECK_ERR(loom_checkpoint_read(c, "A", 2, NULL, NULL, block), LOOM_ERR_FORMAT,
                  "shard-00001-of-00004.safetensors: tensor 'A' is damaged", "crc32");
        CHECK_ERR(loom_checkpoint_read(c, "A", 2, (const int64_t[]){4, 0},
                                       (const int64_t[]){1, 2}, block),
                  LOOM_ERR_FORMAT, "damaged", NULL);  // still damaged on the next read
    }
    loom_checkpoint_close(c);
    CHECK_ERR(loom_checkpoint_merge(dir, tu_path("damaged-merged"), NULL), LOOM_ERR_FORMAT,
              "shard-00001-of-00004.safetensors: tensor 'A' is damaged", NULL);

    // A damaged replica is never read (rank 1 comes first), but merging checks it too.
    const char *replica = tu_path("damaged-replica");
    CHECK_OK(write_checkpoint(replica));
    flip_byte(shard_path(replica, 3, WORLD), "optim.v.A", 0);
    c = NULL;
    CHECK_OK(loom_checkpoint_open(replica, &c));
    if (c) check_reads(c);
    loom_checkpoint_close(c);
    CHECK_ERR(loom_checkpoint_merge(replica, tu_path("replica-merged"), NULL), LOOM_ERR_FORMAT,
              "shard-00003-of-00004.safetensors: tensor 'optim.v.A' is damaged", NULL);

    // A flipped header byte: the shard no longer parses.
    const char *header = tu_path("damaged-header");
    CHECK_OK(write_checkpoint(header));
    flip_byte(shard_path(header, 2, WORLD), NULL, 8);
    c = NULL;
    CHECK_ERR(loom_checkpoint_open(header, &c), LOOM_ERR_FORMAT,
              "shard-00002-of-00004.safetensors", "header");
    CHECK(c == NULL);
}

static void test_uncovered(void) {
    const char *dir = tu_path("uncovered");
    const global_tensor *a = &GLOBALS[0];
    loom_shard_tensor half = slice_of(a, (const int64_t[]){0, 0}, (const int64_t[]){3, 8});
    loom_shard_info info = {0, 1, STEP, CONFIG, NULL};
    CHECK_OK(loom_checkpoint_write_shard(dir, &info, 1, &half));
    free((void *)half.data);
    CHECK_OK(loom_checkpoint_commit(dir, 1, STEP));
    loom_checkpoint_t c = NULL;
    CHECK_OK(loom_checkpoint_open(dir, &c));
    if (!c) return;
    float block[48];
    CHECK_BLOCK(c, "A", {{0, 0}, {3, 8}});
    CHECK_ERR(loom_checkpoint_read(c, "A", 2, NULL, NULL, block), LOOM_ERR_FORMAT,
              "elements [3:6, 0:8] of tensor 'A'", "no shard");
    CHECK_ERR(loom_checkpoint_read(c, "A", 2, (const int64_t[]){2, 1}, (const int64_t[]){3, 2},
                                   block),
              LOOM_ERR_FORMAT, "elements [3:5, 1:3] of tensor 'A'", "(4 of the 6 elements");
    loom_checkpoint_close(c);
    CHECK_ERR(loom_checkpoint_merge(dir, tu_path("uncovered-merged"), NULL), LOOM_ERR_FORMAT,
              "no shard", NULL);
}

static void test_bad_blocks(void) {
    const char *dir = tu_path("run");  // written by test_round_trip
    loom_checkpoint_t c = NULL;
    CHECK_OK(loom_checkpoint_open(dir, &c));
    if (!c) return;
    float block[64];
    CHECK_ERR(loom_checkpoint_read(c, "A", 2, (const int64_t[]){4, 0}, (const int64_t[]){3, 8},
                                   block),
              LOOM_ERR_SHAPE, "outside tensor 'A'", "[6, 8]");
    CHECK_ERR(loom_checkpoint_read(c, "A", 2, (const int64_t[]){-1, 0}, (const int64_t[]){1, 8},
                                   block),
              LOOM_ERR_SHAPE, "outside", NULL);
    CHECK_ERR(loom_checkpoint_read(c, "B", 1, (const int64_t[]){9}, NULL, block), LOOM_ERR_SHAPE,
              "outside tensor 'B'", NULL);
    CHECK_ERR(loom_checkpoint_read(c, "A", 1, (const int64_t[]){0}, (const int64_t[]){8}, block),
              LOOM_ERR_SHAPE, "has 2 dims", NULL);
    CHECK_ERR(loom_checkpoint_read(c, "Z", 1, NULL, NULL, block), LOOM_ERR_NOT_FOUND, "'Z'",
              NULL);
    CHECK_ERR(loom_checkpoint_read(c, "A", 2, NULL, NULL, NULL), LOOM_ERR_INVALID, "NULL", NULL);
    loom_checkpoint_close(c);
}

static void test_write_errors(void) {
    const char *dir = tu_path("write-errors");
    const global_tensor *a = &GLOBALS[0];
    loom_shard_tensor t = slice_of(a, (const int64_t[]){4, 0}, (const int64_t[]){3, 8});
    loom_shard_info info = {0, 1, STEP, CONFIG, NULL};
    CHECK_ERR(loom_checkpoint_write_shard(dir, &info, 1, &t), LOOM_ERR_SHAPE,
              "slice of tensor 'A' at offset [4, 0] of shape [3, 8]", "outside its global shape");
    CHECK(!tu_file_exists(shard_path(dir, 0, 1)));
    t.offset[0] = 3;
    t.global_shape[1] = 7;
    CHECK_ERR(loom_checkpoint_write_shard(dir, &info, 1, &t), LOOM_ERR_SHAPE, "(dim 1)", NULL);
    t.global_shape[1] = 8;
    t.offset[1] = -1;
    CHECK_ERR(loom_checkpoint_write_shard(dir, &info, 1, &t), LOOM_ERR_SHAPE, "outside", NULL);
    t.offset[1] = 0;
    t.shape[0] = -3;
    CHECK_ERR(loom_checkpoint_write_shard(dir, &info, 1, &t), LOOM_ERR_INVALID, "negative", NULL);
    t.shape[0] = 3;
    t.ndim = 7;
    CHECK_ERR(loom_checkpoint_write_shard(dir, &info, 1, &t), LOOM_ERR_INVALID, "7 dims", NULL);
    t.ndim = 2;
    loom_shard_tensor twice[2] = {t, t};
    CHECK_ERR(loom_checkpoint_write_shard(dir, &info, 2, twice), LOOM_ERR_INVALID, "twice", NULL);
    twice[1].name = "";
    CHECK_ERR(loom_checkpoint_write_shard(dir, &info, 2, twice), LOOM_ERR_INVALID, "empty", NULL);
    const float *data = t.data;
    t.data = NULL;
    CHECK_ERR(loom_checkpoint_write_shard(dir, &info, 1, &t), LOOM_ERR_INVALID, "NULL data", NULL);
    t.data = data;
    info.rank = 1;
    CHECK_ERR(loom_checkpoint_write_shard(dir, &info, 1, &t), LOOM_ERR_INVALID, "rank 1 of world 1",
              NULL);
    info.rank = 0;
    info.config_json = "{\"n_layer\": ";
    CHECK_ERR(loom_checkpoint_write_shard(dir, &info, 1, &t), LOOM_ERR_INVALID, "config_json",
              NULL);
    info.config_json = CONFIG;
    CHECK_ERR(loom_checkpoint_write_shard(tu_path("no/such/dir"), &info, 1, &t), LOOM_ERR_IO,
              "no/such", NULL);
    CHECK_ERR(loom_checkpoint_write_shard(NULL, &info, 1, &t), LOOM_ERR_INVALID, NULL, NULL);
    CHECK_ERR(loom_checkpoint_commit(dir, 0, STEP), LOOM_ERR_INVALID, "world", NULL);
    CHECK_OK(loom_checkpoint_write_shard(dir, &info, 1, &t));  // the slice is fine now
    free((void *)t.data);
}

static void test_commit_mismatch(void) {
    const char *dir = tu_path("mismatch");
    rank_shard s0, s1;
    rank_shard_make(&s0, 0);
    rank_shard_make(&s1, 1);
    CHECK_OK(write_rank(dir, 0, 2, 5, &s0));
    CHECK_OK(write_rank(dir, 1, 2, 6, &s1));  // a shard from another save
    CHECK_ERR(loom_checkpoint_commit(dir, 2, 5), LOOM_ERR_FORMAT, "shard-00001-of-00002",
              "rank 1 of 2 at step 6");
    CHECK_ERR(loom_checkpoint_commit(dir, 2, 7), LOOM_ERR_FORMAT, "shard-00000-of-00002",
              "expects rank 0 of 2 at step 7");
    CHECK_ERR(loom_checkpoint_commit(dir, 3, 5), LOOM_ERR_NOT_FOUND, "shard-00000-of-00003",
              NULL);
    // A shard written for another world size, renamed into place.
    CHECK_OK(write_rank(dir, 1, 3, 5, &s1));
    char from[600];
    snprintf(from, sizeof from, "%s", shard_path(dir, 1, 3));
    CHECK(rename(from, shard_path(dir, 1, 2)) == 0);
    CHECK_ERR(loom_checkpoint_commit(dir, 2, 5), LOOM_ERR_FORMAT, "rank 1 of 3 at step 5", NULL);
    // Shards that disagree on a global shape.
    find_slice(&s1, "B")->global_shape[0] = 9;
    CHECK_OK(write_rank(dir, 1, 2, 5, &s1));
    CHECK_ERR(loom_checkpoint_commit(dir, 2, 5), LOOM_ERR_FORMAT,
              "tensor 'B' has global shape [9]", "[8]");
    CHECK(!tu_file_exists(path_in(dir, "checkpoint.json")));
    find_slice(&s1, "B")->global_shape[0] = 8;
    CHECK_OK(write_rank(dir, 1, 2, 5, &s1));
    CHECK_OK(loom_checkpoint_commit(dir, 2, 5));
    rank_shard_free(&s0);
    rank_shard_free(&s1);
}

static void test_replicas_disagree(void) {
    const char *dir = tu_path("disagree");
    CHECK_OK(write_ranks(dir, 2));
    rank_shard s;
    rank_shard_make(&s, 2);
    ((float *)find_slice(&s, "A")->data)[1 * 8 + 5] += 1;  // global element [1, 5]
    CHECK_OK(write_rank(dir, 2, WORLD, STEP, &s));
    rank_shard_free(&s);
    CHECK_OK(loom_checkpoint_commit(dir, WORLD, STEP));
    loom_checkpoint_t c = NULL;
    CHECK_OK(loom_checkpoint_open(dir, &c));
    if (c) check_reads(c);  // the lowest rank wins
    loom_checkpoint_close(c);
    CHECK_ERR(loom_checkpoint_merge(dir, tu_path("disagree-merged"), NULL), LOOM_ERR_FORMAT,
              "replicas of tensor 'A' disagree at element [1, 5]",
              "shard-00002-of-00004.safetensors");
}

static void test_bad_index(void) {
    const char *dir = tu_path("bad-index");
    loom_checkpoint_t c = NULL;
    CHECK_OK(write_checkpoint(dir));
    const char *index = path_in(dir, "checkpoint.json");
    const char *bad[] = {
        "{\"format\": \"loom-checkpoint-1\", \"world\": 4, \"step\": 42",
        "{\"format\": \"loom-checkpoint-2\", \"world\": 4, \"step\": 42, \"shards\": []}",
        "{\"format\": \"loom-checkpoint-1\", \"world\": 2, \"step\": 42, \"shards\": [\"a\"]}",
        "{\"format\": \"loom-checkpoint-1\", \"world\": 1, \"step\": 42, "
        "\"shards\": [\"../x.safetensors\"]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        CHECK(tu_write_file(index, bad[i], strlen(bad[i])) == 0);
        CHECK_ERR(loom_checkpoint_open(dir, &c), LOOM_ERR_FORMAT, "checkpoint index", NULL);
    }
    // An index claiming another step than its shards.
    const char *other_step = "{\"format\": \"loom-checkpoint-1\", \"world\": 4, \"step\": 41, "
        "\"shards\": [\"shard-00000-of-00004.safetensors\", \"shard-00001-of-00004.safetensors\", "
        "\"shard-00002-of-00004.safetensors\", \"shard-00003-of-00004.safetensors\"]}";
    CHECK(tu_write_file(index, other_step, strlen(other_step)) == 0);
    CHECK_ERR(loom_checkpoint_open(dir, &c), LOOM_ERR_FORMAT, "at step 42", "step 41");
    // A safetensors file that is not a shard.
    const char *plain = tu_path("plain.safetensors");
    float x = 1;
    loom_named_tensor t = {"x", LOOM_DTYPE_F32, 1, {1}, &x};
    CHECK_OK(loom_safetensors_write(plain, 1, &t, 0, NULL));
    CHECK(rename(plain, shard_path(dir, 0, WORLD)) == 0);
    CHECK_ERR(loom_checkpoint_commit(dir, WORLD, STEP), LOOM_ERR_FORMAT,
              "is not a loom checkpoint shard", NULL);
}

int main(void) {
    if (tu_scratch_make("ckpt") != 0) {
        perror("mkdtemp");
        return 1;
    }
    test_round_trip();
    test_resharding();
    test_incomplete();
    test_missing_shard();
    test_damaged();
    test_uncovered();
    test_bad_blocks();
    test_write_errors();
    test_commit_mismatch();
    test_replicas_disagree();
    test_bad_index();
    tu_remove_tree(tu_scratch);
    return tu_finish();
}
