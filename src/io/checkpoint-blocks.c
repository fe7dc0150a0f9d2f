// Block arithmetic of the checkpoint reader: intersecting and subtracting blocks, walking them
// in contiguous runs, and assembling a requested block from the slices that cover it.

#include "core/core.h"
#include "io/checkpoint-common.h"
#include "io/safetensors-common.h"

#include <string.h>

// ---- blocks ----------------------------------------------------------------------------------

bool loom__ckpt_box_intersect(const ckpt_box *a, const ckpt_box *b, int ndim, ckpt_box *out) {
    for (int d = 0; d < ndim; d++) {
        out->lo[d] = a->lo[d] > b->lo[d] ? a->lo[d] : b->lo[d];
        out->hi[d] = a->hi[d] < b->hi[d] ? a->hi[d] : b->hi[d];
        if (out->lo[d] >= out->hi[d]) return false;
    }
    return true;
}

int64_t loom__ckpt_box_volume(const ckpt_box *b, int ndim) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= b->hi[d] - b->lo[d];
    return n;
}

const char *loom__ckpt_format_box(char *buf, size_t cap, const ckpt_box *b, int ndim) {
    size_t len = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < ndim && len < cap; d++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%lld:%lld", d ? ", " : "",
                                (long long)b->lo[d], (long long)b->hi[d]);
    if (len < cap) snprintf(buf + len, cap - len, "]");
    return buf;
}

int loom__ckpt_for_each_run(const ckpt_box *part, int ndim, const ckpt_box *a, const ckpt_box *b,
                            ckpt_run_fn fn, void *ctx) {
    if (ndim == 0) return fn(ctx, 0, 0, 1);
    int64_t a_stride[LOOM_MAX_DIMS], b_stride[LOOM_MAX_DIMS], idx[LOOM_MAX_DIMS];
    a_stride[ndim - 1] = b_stride[ndim - 1] = 1;
    for (int d = ndim - 2; d >= 0; d--) {
        a_stride[d] = a_stride[d + 1] * (a->hi[d + 1] - a->lo[d + 1]);
        b_stride[d] = b_stride[d + 1] * (b->hi[d + 1] - b->lo[d + 1]);
    }
    // Trailing dims that `part` spans in full in both layouts join the innermost run.
    int inner = ndim - 1;
    while (inner > 0 && part->lo[inner] == a->lo[inner] && part->hi[inner] == a->hi[inner] &&
           part->lo[inner] == b->lo[inner] && part->hi[inner] == b->hi[inner])
        inner--;
    int64_t run = 1;
    for (int d = inner; d < ndim; d++) run *= part->hi[d] - part->lo[d];
    memcpy(idx, part->lo, sizeof idx);
    for (;;) {
        int64_t ai = 0, bi = 0;
        for (int d = 0; d < ndim; d++) {
            ai += (idx[d] - a->lo[d]) * a_stride[d];
            bi += (idx[d] - b->lo[d]) * b_stride[d];
        }
        int r = fn(ctx, ai, bi, run);
        if (r) return r;
        int d = inner - 1;  // odometer over the outer dims
        while (d >= 0 && ++idx[d] == part->hi[d]) {
            idx[d] = part->lo[d];
            d--;
        }
        if (d < 0) return 0;
    }
}

// A growable list of blocks.
typedef struct box_list {
    ckpt_box *items;
    int n, cap;
} box_list;

static loom_status box_list_push(box_list *l, const ckpt_box *b) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 8;
        ckpt_box *p = loom__realloc(l->items, (size_t)cap * sizeof *p);
        if (!p) return LOOM_ERR_NOMEM;
        l->items = p;
        l->cap = cap;
    }
    l->items[l->n++] = *b;
    return LOOM_OK;
}

// Append a \ b, as at most 2 * ndim disjoint blocks, to `out`; a and b intersect.
static loom_status box_subtract(const ckpt_box *a, const ckpt_box *b, int ndim, box_list *out) {
    ckpt_box rest = *a;
    for (int d = 0; d < ndim; d++) {
        if (rest.lo[d] < b->lo[d]) {
            ckpt_box below = rest;
            below.hi[d] = rest.lo[d] = b->lo[d];
            LOOM_CHECK(box_list_push(out, &below));
        }
        if (rest.hi[d] > b->hi[d]) {
            ckpt_box above = rest;
            above.lo[d] = rest.hi[d] = b->hi[d];
            LOOM_CHECK(box_list_push(out, &above));
        }
    }
    return LOOM_OK;
}

// ---- loading and assembling ------------------------------------------------------------------

loom_status loom__ckpt_load_piece(loom_checkpoint_t c, const ckpt_tensor *t, ckpt_piece *p,
                                  float **out) {
    int64_t shape[LOOM_MAX_DIMS];
    for (int d = 0; d < t->ndim; d++) shape[d] = p->box.hi[d] - p->box.lo[d];
    size_t bytes = (size_t)loom__ckpt_box_volume(&p->box, t->ndim) * sizeof(float);
    float *data = loom__malloc(bytes);
    if (!data) return LOOM_ERR_NOMEM;
    loom_weights_t w = c->sources[p->source];
    loom_status st = loom_weights_read_f32(w, p->file_name, t->ndim, shape, data);
    if (st >= 0 && p->has_crc32 && !p->verified) {
        uint32_t crc = loom__ckpt_crc32(data, bytes);
        if (crc != p->crc32)
            st = loom__error(LOOM_ERR_FORMAT, "%s: tensor '%s' is damaged (crc32 %08x, expected "
                             "%08x); restore this shard or use another checkpoint",
                             loom_weights_path(w), p->file_name, (unsigned)crc,
                             (unsigned)p->crc32);
        p->verified = st >= 0;
    }
    if (st < 0) {
        loom__free(data);
        return st;
    }
    *out = data;
    return LOOM_OK;
}

typedef struct copy_ctx {
    float *dst;
    const float *src;
} copy_ctx;

static int copy_run(void *ctx, int64_t dst_index, int64_t src_index, int64_t n) {
    copy_ctx *cc = ctx;
    memcpy(cc->dst + dst_index, cc->src + src_index, (size_t)n * sizeof(float));
    return 0;
}

static loom_status uncovered_error(loom_checkpoint_t c, const ckpt_tensor *t,
                                   const ckpt_box *want, const box_list *missing) {
    char blocks[512], one[160], shape[128];
    int64_t count = 0;
    size_t len = 0;
    blocks[0] = '\0';
    for (int i = 0; i < missing->n; i++) {
        count += loom__ckpt_box_volume(&missing->items[i], t->ndim);
        if (i < 4 && len < sizeof blocks)
            len += (size_t)snprintf(blocks + len, sizeof blocks - len, "%s%s", i ? ", " : "",
                                    loom__ckpt_format_box(one, sizeof one, &missing->items[i],
                                                          t->ndim));
    }
    return loom__error(LOOM_ERR_FORMAT, "checkpoint '%s': elements %s%s of tensor '%s' (global "
                       "shape %s) are in no shard (%lld of the %lld elements asked for); the shards "
                       "do not cover the tensor", c->dir, blocks, missing->n > 4 ? ", ..." : "",
                       t->name, loom__st_format_shape(shape, sizeof shape, t->ndim,
                                                      t->global_shape),
                       (long long)count, (long long)loom__ckpt_box_volume(want, t->ndim));
}

// Walk the pieces in rank order, keeping the blocks still to fill: each piece fills its part of
// them and leaves the rest. Blocks left at the end are in no shard.
loom_status loom__ckpt_assemble(loom_checkpoint_t c, const ckpt_tensor *t, const ckpt_box *want,
                                float *dst) {
    box_list todo = {0}, next = {0};
    float *data = NULL;
    loom_status st;
    LOOM_CHECK_GOTO(box_list_push(&todo, want), st, done);
    for (int i = 0; i < t->n_pieces && todo.n > 0; i++) {
        ckpt_piece *p = &t->pieces[i];
        next.n = 0;
        for (int k = 0; k < todo.n; k++) {
            ckpt_box part;
            if (!loom__ckpt_box_intersect(&todo.items[k], &p->box, t->ndim, &part)) {
                LOOM_CHECK_GOTO(box_list_push(&next, &todo.items[k]), st, done);
                continue;
            }
            if (!data) LOOM_CHECK_GOTO(loom__ckpt_load_piece(c, t, p, &data), st, done);
            copy_ctx cc = {dst, data};
            loom__ckpt_for_each_run(&part, t->ndim, want, &p->box, copy_run, &cc);
            LOOM_CHECK_GOTO(box_subtract(&todo.items[k], &p->box, t->ndim, &next), st, done);
        }
        loom__free(data);
        data = NULL;
        box_list swap = todo;
        todo = next;
        next = swap;
    }
    st = todo.n > 0 ? uncovered_error(c, t, want, &todo) : LOOM_OK;
done:
    loom__free(data);
    loom__free(todo.items);
    loom__free(next.items);
    return st;
}
