// Sharded checkpoints of a parallel run: every rank of the first unit writes its shards of the
// parameters and AdamW moments; loading reads whatever blocks the current plan needs from a
// sharded or merged checkpoint (resharding).

#include "loom/checkpoint.h"

#include "core/core.h"
#include "plan/shard.h"
#include "runtime/parallel-impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// The optimizer moments over the whole flat parameter region (gathered from the ZeRO group
// when they are sharded); `owned` says whether the caller must free them.
static loom_status full_moments(rank_state *rs, float *moments[2], int *owned) {
    loom_runner *r = rs->runner;
    float *state[2] = {r->opt_m, r->opt_v};
    *owned = r->zero_comm != NULL;
    size_t n = r->prog->region_bytes[LOOM_REGION_PARAM] / sizeof(float);
    for (int k = 0; k < 2; k++) {
        moments[k] = NULL;
        if (!state[k]) continue;
        if (!*owned) {
            moments[k] = state[k];
            continue;
        }
        moments[k] = loom__malloc(n * sizeof(float));
        if (!moments[k]) return LOOM_ERR_NOMEM;
        size_t share = n / (size_t)loom_comm_size(r->zero_comm);
        LOOM_CHECK(loom_comm_all_gather(r->zero_comm, state[k], moments[k], share, LOOM_DTYPE_F32));
    }
    return LOOM_OK;
}

typedef struct shard_list {
    loom_shard_tensor *t;
    char **names;
    float **owned;  // buffers to free
    int n, n_owned, cap;
} shard_list;

static loom_status list_add(shard_list *l, const char *prefix, const char *name,
                            const loom_value_info *gv, const int64_t *offset,
                            const int64_t *shape, const float *data, float *owned) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 64;
        loom_shard_tensor *t = loom__realloc(l->t, (size_t)cap * sizeof *t);
        char **names = t ? loom__realloc(l->names, (size_t)cap * sizeof(char *)) : NULL;
        float **own = names ? loom__realloc(l->owned, (size_t)cap * sizeof(float *)) : NULL;
        if (t) l->t = t;
        if (names) l->names = names;
        if (own) l->owned = own;
        if (!t || !names || !own) return LOOM_ERR_NOMEM;
        l->cap = cap;
    }
    size_t len = strlen(prefix) + strlen(name) + 1;
    char *full = loom__malloc(len);
    if (!full) return LOOM_ERR_NOMEM;
    snprintf(full, len, "%s%s", prefix, name);
    loom_shard_tensor *t = &l->t[l->n];
    memset(t, 0, sizeof *t);
    t->name = full;
    t->ndim = gv->ndim;
    memcpy(t->global_shape, gv->shape, sizeof gv->shape);
    memcpy(t->offset, offset, sizeof t->offset);
    memcpy(t->shape, shape, sizeof t->shape);
    t->data = data;
    l->names[l->n++] = full;
    if (owned) l->owned[l->n_owned++] = owned;
    return LOOM_OK;
}

static void list_free(shard_list *l) {
    for (int i = 0; i < l->n; i++) loom__free(l->names[i]);
    for (int i = 0; i < l->n_owned; i++) loom__free(l->owned[i]);
    loom__free(l->t), loom__free(l->names), loom__free(l->owned);
}

// One tensor (a parameter or a moment, `local` its rank-local data) into the rank's shard list.
// Contiguous shards go as blocks; replicated tensors and fused-chunk shards are written whole
// by the stage's first rank (fused shards are gathered first: the format holds blocks). A tied
// parameter is written by the first pipeline rank holding it.
static loom_status add_tensor(rank_state *rs, shard_list *l, const loom_local_leaf *leaf,
                              const char *prefix, const float *local) {
    const loom_value_info *gv = &rs->par->global->values[leaf->global];
    int64_t offset[LOOM_MAX_DIMS], shape[LOOM_MAX_DIMS];
    int owner = loom__leaf_owner(rs, leaf);
    if (loom__shard_block(rs, leaf, offset, shape))
        return owner ? list_add(l, prefix, gv->name, gv, offset, shape, local, NULL) : LOOM_OK;
    if (leaf->place.kind != LOOM_PLACE_SHARD)
        return owner ? list_add(l, prefix, gv->name, gv, offset, shape, local, NULL) : LOOM_OK;
    if (!owner) return LOOM_OK;  // every rank of the stage agrees: all gather or none
    float *full = loom__malloc((size_t)loom__value_numel(rs->par->global, leaf->global) * sizeof(float));
    if (!full) return LOOM_ERR_NOMEM;
    loom_status st = loom__gather_full(rs, leaf, local, full);
    if (st == 0 && rs->tp_index == 0) return list_add(l, prefix, gv->name, gv, offset, shape, full, full);
    loom__free(full);
    return st;
}

static loom_status rank_save(rank_state *rs) {
    loom_parallel_t p = rs->par;
    loom_runner *r = rs->runner;
    float *moments[2] = {NULL, NULL};
    int owned = 0;
    shard_list l = {0};
    loom_status st = full_moments(rs, moments, &owned);
    if (st < 0 || rs->unit != 0) goto done;  // other units hold replicas
    for (int i = 0; i < rs->lg.n_leaves && st == 0; i++) {
        const loom_local_leaf *leaf = &rs->lg.leaves[i];
        if (p->global->values[leaf->global].role != LOOM_ROLE_PARAM) continue;
        size_t off = r->prog->offset[leaf->local] / sizeof(float);
        st = add_tensor(rs, &l, leaf, "", r->ptr[leaf->local]);
        if (st == 0 && moments[0]) st = add_tensor(rs, &l, leaf, "optim.m.", moments[0] + off);
        if (st == 0 && moments[1]) st = add_tensor(rs, &l, leaf, "optim.v.", moments[1] + off);
    }
    if (st < 0) goto done;
    char *config = loom_model_config_to_json(loom_model_get_config(p->model));
    char extra[128];
    snprintf(extra, sizeof extra, "{\"optimizer\": \"%s\"}",
             p->tc.optimizer == LOOM_OPTIM_ADAMW ? "adamw" : "sgd");
    loom_shard_info info = {.rank = rs->index, .world = p->parts, .step = r->step,
                            .config_json = config, .extra_json = extra};
    st = config ? loom_checkpoint_write_shard(p->io_dir, &info, l.n, l.t) : LOOM_ERR_NOMEM;
    free(config);
    // Every shard must be on disk before the first rank commits the directory.
    if (st == 0 && p->parts > 1) st = loom_comm_barrier(rs->unit_comm);
    if (st == 0 && rs->index == 0) st = loom_checkpoint_commit(p->io_dir, p->parts, r->step);
done:
    list_free(&l);
    if (owned) loom__free(moments[0]), loom__free(moments[1]);
    return st;
}

// Run a checkpoint rank function with the directory it reads or writes.
static loom_status run_with_dir(loom_parallel_t p, const char *dir, loom__rank_fn fn) {
    if (!dir || !*dir) return loom__error(LOOM_ERR_INVALID, "checkpoint: no directory given");
    p->io_dir = dir;
    loom_status st = loom__run_ranks(p, fn);
    p->io_dir = NULL;
    return st;
}

loom_status loom_parallel_save_sharded(loom_parallel_t p, const char *dir) {
    return run_with_dir(p, dir, rank_save);
}

// ---- loading -------------------------------------------------------------------------------------

// Read the rank's part of global tensor `name` (placement of `leaf`) into `local`.
static loom_status read_tensor(rank_state *rs, loom_checkpoint_t ck, const loom_local_leaf *leaf,
                               const char *name, float *local) {
    const loom_value_info *gv = &rs->par->global->values[leaf->global];
    const loom_placement *pl = &leaf->place;
    int64_t offset[LOOM_MAX_DIMS], shape[LOOM_MAX_DIMS];
    if (loom__shard_block(rs, leaf, offset, shape))
        return loom_checkpoint_read(ck, name, gv->ndim, offset, shape, local);
    if (pl->kind != LOOM_PLACE_SHARD) return loom_checkpoint_read(ck, name, gv->ndim, offset, shape, local);
    float *full = loom__malloc((size_t)loom__value_numel(rs->par->global, leaf->global) * sizeof(float));
    if (!full) return LOOM_ERR_NOMEM;
    loom_status st = loom_checkpoint_read(ck, name, gv->ndim, offset, shape, full);
    if (st == 0) {
        loom_shard_layout lay = loom__shard_layout(gv->ndim, gv->shape, pl->dim, pl->chunks,
                                                   rs->par->tp);
        loom__shard_copy(&lay, rs->tp_index, local, full, 1, 0);
    }
    loom__free(full);
    return st;
}

static loom_status rank_load(rank_state *rs) {
    loom_parallel_t p = rs->par;
    loom_runner *r = rs->runner;
    loom_checkpoint_t ck = NULL;
    LOOM_CHECK(loom_checkpoint_open(p->io_dir, &ck));
    size_t n = r->prog->region_bytes[LOOM_REGION_PARAM] / sizeof(float);
    float *moments[2] = {NULL, NULL};
    float *state[2] = {r->opt_m, r->opt_v};
    loom_status st = LOOM_OK;
    int have_moments = 1;
    for (int i = 0; i < rs->lg.n_leaves && st == 0; i++) {
        const loom_local_leaf *leaf = &rs->lg.leaves[i];
        const loom_value_info *gv = &p->global->values[leaf->global];
        if (gv->role != LOOM_ROLE_PARAM) continue;
        st = read_tensor(rs, ck, leaf, gv->name, r->ptr[leaf->local]);
        char name[600];
        for (int k = 0; k < 2 && st == 0; k++) {
            if (!state[k]) continue;
            snprintf(name, sizeof name, "optim.%c.%s", k ? 'v' : 'm', gv->name);
            if (!loom_checkpoint_has(ck, name)) {
                have_moments = 0;
                continue;
            }
            if (!moments[k]) {
                moments[k] = loom__calloc(n, sizeof(float));
                if (!moments[k]) {
                    st = LOOM_ERR_NOMEM;
                    break;
                }
            }
            st = read_tensor(rs, ck, leaf, name, moments[k] + r->prog->offset[leaf->local] / 4);
        }
    }
    // Moments written by another optimizer (AdamW's m is no SGD momentum) are not loaded.
    const char *extra = loom_checkpoint_extra_json(ck);
    const char *mine = p->tc.optimizer == LOOM_OPTIM_ADAMW ? "\"adamw\"" : "\"sgd\"";
    int same_optimizer = !extra || !strstr(extra, "\"optimizer\"") || strstr(extra, mine);
    if (st == 0) r->step = loom_checkpoint_step(ck);
    int needs_state = state[0] || state[1];
    if (st == 0 && needs_state && have_moments && same_optimizer && (moments[0] || moments[1])) {
        // This rank's share of the flat moments (all of them without ZeRO).
        size_t parts = r->zero_comm ? (size_t)loom_comm_size(r->zero_comm) : 1;
        size_t begin = r->zero_comm ? (size_t)loom_comm_rank(r->zero_comm) * (n / parts) : 0;
        for (int k = 0; k < 2; k++)
            if (state[k] && moments[k])
                memcpy(state[k], moments[k] + begin, n / parts * sizeof(float));
    } else if (st == 0 && needs_state && rs->rank == 0) {
        loom__log(LOOM_LOG_WARN, "%s holds no optimizer state for this optimizer (%s): its "
                  "moments start from zero", p->io_dir,
                  p->tc.optimizer == LOOM_OPTIM_ADAMW ? "adamw" : "sgd");
    }
    loom__free(moments[0]), loom__free(moments[1]);
    loom_checkpoint_close(ck);
    return st;
}

loom_status loom_parallel_load_checkpoint(loom_parallel_t p, const char *dir) {
    return run_with_dir(p, dir, rank_load);
}
