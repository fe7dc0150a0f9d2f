// Internals of the plan search shared by its files: the per-layer stage costs found by lowering
// small copies of the model, the estimate of one candidate plan, and the search state.

#ifndef LOOM_COST_AUTODIST_IMPL_H
#define LOOM_COST_AUTODIST_IMPL_H

#include "loom/autodist.h"
#include "loom/device.h"
#include "ir/ir.h"

// The kinds of stage programs a plan is made of.
typedef enum ad_kind {
    AD_SINGLE = 0,  // no pipeline: embeddings, layers, head
    AD_FIRST,       // embeddings and layers, sends its output
    AD_MIDDLE,      // receives, layers, sends
    AD_LAST,        // receives, layers, head and loss
    AD_KIND_COUNT
} ad_kind;

// A quantity of a stage program with k layers: base + k * layer.
typedef struct ad_linear {
    double base, layer;
} ad_linear;

static inline double ad_at(ad_linear x, double k) { return x.base + k * x.layer; }

// One stage program kind under one (tp, micro-batch, recomputation): what it costs per micro-
// batch and what it holds, from its lowered program (fp32 bytes, as the CPU runtime holds them).
typedef struct ad_part {
    ad_linear forward_s, backward_s;  // one micro-batch; backward includes recomputation
    ad_linear tp_comm_s;              // the tensor-parallel collectives among them
    ad_linear arena;                  // activation bytes with one micro-batch in flight
    ad_linear held;                   // bytes each further micro-batch in flight adds
    ad_linear params;                 // parameter bytes (4 per element)
    ad_linear inputs;                 // one micro-batch's input region (tokens, received values)
    ad_linear staging;                // one micro-batch's token buffers of the parallel runtime
    double scratch;                   // kernel scratch
    double send_bytes;                // boundary activations sent per micro-batch
} ad_part;

// The parts of every kind for one (tp, micro_batch, recompute variant, layout); cached by the
// search.
typedef struct ad_parts {
    int tp, micro_batch, variant, layout;
    int built[2];                     // the unpipelined part, the pipelined kinds' parts
    loom_status status;               // < 0: this tp cannot split the model (message below)
    char error[512];
    ad_part part[AD_KIND_COUNT];
} ad_parts;

// Recompute variants the parts are built for: none, selective, full (every layer), or the
// user's recompute_modules.
enum { AD_VARIANT_NONE = 0, AD_VARIANT_SELECTIVE, AD_VARIANT_FULL, AD_VARIANT_CUSTOM,
       AD_VARIANT_COUNT };

// One op's strategy inside a stage's tensor-parallel group where it differs from the model
// family's table: the ops of signature `op` whose module path ends in `module` (the module
// inside a layer, "attn.c_attn", so every layer alike; or a whole path outside the layers) are
// replicated (split = 0) or split along dim `dim` of input `input` (split = 1).
typedef struct ad_override {
    char *module;
    const char *op;
    int split, input, dim;
} ad_override;

// A layout: the strategies of every op of a stage under tensor-parallel degree tp, as overrides
// of the family's table. Layout 0 is the table itself (any tp, no overrides).
typedef struct ad_layout {
    int tp;
    int n;
    ad_override *ov;
    loom_constraints_t constraints;   // the user's + one per override (owned), or for layout
                                      // 0 the user's (borrowed; may be NULL)
    char *description;                // "attn: split b; attn.c_attn: replicated" ("" for 0)
} ad_layout;

typedef struct ad_ctx {
    loom_model_config model;
    loom_autodist_config cfg;         // defaults resolved
    loom_device_spec spec;
    loom_precision precision;         // FP32 or MIXED
    loom_dtype dtype;                 // the matmul dtype of the roofline
    int measured;                     // op times measured on this machine's CPU backend
    int threads;                      // threads per device when measuring
    int concurrent;                   // devices sharing this machine (measured copies at once)
    double oversubscribed;            // devices per core when there are more devices (>= 1)
    char layer_format[64];            // "h.%d": the module of numbered layer i
    int64_t n_params;                 // of the model (tied ones once)
    ad_parts **cache;
    int n_cache, cap_cache;
    ad_layout *layouts;               // [0]: the family's table
    int n_layouts, cap_layouts;
    struct ad_searched {              // the per-op search's answers: layout for (tp, b)
        int tp, micro_batch, layout;
    } *searched;
    int n_searched, cap_searched;
} ad_ctx;

// Check `cfg` and fill ctx with it, defaults resolved (device spec, memory limit, precision,
// how op times are found, threads) and the model's facts. Errors name the setting and the fix.
loom_status loom__ad_resolve(ad_ctx *ctx, const loom_model_config *model,
                             const loom_autodist_config *cfg);

// The part of module path `path` inside layer 0 ("attn.c_attn" of "h.0.attn.c_attn", "" for
// "h.0" itself), or NULL when the path is outside layer 0.
const char *loom__ad_in_layer0(const ad_ctx *ctx, const char *path);

// ---- per-op strategies (layout.c) ----

// Layout 0 (the family's table, with the user's constraints). Called by loom__ad_resolve.
loom_status loom__ad_layouts_init(ad_ctx *ctx);
// The layout the per-op search finds for tp at micro-batch b (searched once, then remembered;
// equal layouts found for several b share one index): its index, or 0 when nothing beats the
// family's table (or the search is off, or tp is 1). Errors: LOOM_ERR_NOMEM only.
loom_status loom__ad_layout_search(ad_ctx *ctx, int tp, int micro_batch, int *layout);
// Register the layout with these overrides for tp (a plan file's); its index in *layout.
// Errors name the override that is not a known op (LOOM_ERR_INVALID) or LOOM_ERR_NOMEM.
loom_status loom__ad_layout_add(ad_ctx *ctx, int tp, const ad_override *ov, int n, int *layout);
void loom__ad_layouts_free(ad_ctx *ctx);

// Seconds of one micro-batch (forward + backward) on tensor-parallel rank 0 of `global`, planned
// for tp devices per stage with the family's table and `constraints`, without a pipeline: the
// per-op search's measure. Errors: the plan's (this layout cannot split the model).
loom_status loom__ad_plan_seconds(ad_ctx *ctx, const loom_graph *global, loom_value loss,
                                  loom_constraints_t constraints, int tp, double *seconds);

// The parts for (tp, micro_batch, variant, layout): built on first use (graphs of one and two layers,
// alone, or with `piped` cut into a three-stage pipeline for the first, middle and last kinds;
// planned, parallelized and lowered), then cached. NULL only when out of memory; a tp that does
// not split the model has status < 0.
const ad_parts *loom__ad_parts(ad_ctx *ctx, int tp, int micro_batch, int variant, int layout,
                               int piped);

// Free the parts cache.
void loom__ad_parts_free(ad_ctx *ctx);

// The recompute spec of a variant ("" for none).
const char *loom__ad_variant_spec(const ad_ctx *ctx, int variant);

// A candidate plan with its estimate; owns the arrays the public plan points to.
typedef struct ad_plan {
    loom_autodist_plan pub;
    loom_autodist_stage *stages;
    loom_autodist_memory *memory;
    char *pipeline_layers;
    char *recompute_spec;
    char rejected[256];
    int layout;                       // index into ctx->layouts (set before loom__ad_estimate)
    // Set before loom__ad_estimate to estimate a given plan (a loaded plan file) rather than
    // choose: layers per virtual stage, and under full recomputation the layers each pipeline
    // rank recomputes in each of its stages. NULL: chosen by the estimate. Borrowed.
    const int *preset_layers;
    const int *preset_recompute;
} ad_plan;

// Estimate the plan whose tp, pp, dp, chunks, micro_batch, num_micro_batches, schedule,
// recompute and zero are set in p->pub: stage split, times, memory. With full recomputation,
// each pipeline rank recomputes as few of its layers as fit the memory limit (all of them when
// none do). Errors: the parts' (this tp cannot split the model), LOOM_ERR_NOMEM.
loom_status loom__ad_estimate(ad_ctx *ctx, ad_plan *p);
void loom__ad_plan_free(ad_plan *p);
// A deep copy (strings and arrays).
loom_status loom__ad_plan_copy(const ad_plan *src, ad_plan *dst);

struct loom_autodist {
    ad_ctx ctx;
    ad_plan best;
    ad_plan *alternatives;
    int n_alternatives;
    double search_s;
    int64_t evaluated;
    size_t min_memory;
};

// The device spec the search ran with.
const loom_device_spec *loom__autodist_spec(loom_autodist_t a);

// The best plan as the JSON of a plan file, in one line (free it with free()): how rank 0 hands
// the plan it searched to the other MPI processes.
loom_status loom__autodist_plan_text(loom_autodist_t a, char **text);
// loom_autodist_load of a plan in `text`; `name` stands for the file in messages.
loom_status loom__autodist_load_text(const char *text, const char *name,
                                     const loom_model_config *model,
                                     const loom_autodist_config *cfg, loom_autodist_t *out);

#endif // LOOM_COST_AUTODIST_IMPL_H
