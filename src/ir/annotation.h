// Parsed dimension annotations (the nnScaler "dimops" language of DESIGN.md section 2).
//
//   "* k+, n k+ -> * n"      tensors separated by ',', dims by spaces, inputs -> outputs
//   b       splittable identifier        k+  reduction (outputs lacking it become partial sums)
//   k^      frozen (never split)          8   numeric literal (always frozen)
//   *       any number of leading dims    (g r d^)  one dim made of several identifiers

#ifndef LOOM_IR_ANNOTATION_H
#define LOOM_IR_ANNOTATION_H

#include "loom/graph.h"

#define LOOM_ANN_MAX_IDS 16
#define LOOM_ANN_MAX_TENSORS 8
#define LOOM_ANN_MAX_FACTORS 4

typedef enum loom_ann_kind {
    LOOM_ANN_SPLIT = 0,  // plain identifier
    LOOM_ANN_REDUCE,     // k+
    LOOM_ANN_FROZEN,     // k^ or a numeric literal
} loom_ann_kind;

typedef struct loom_ann_ident {
    char name[16];
    loom_ann_kind kind;
    int64_t literal;  // > 0 for numeric literals
} loom_ann_ident;

typedef struct loom_ann_dim {
    int n_factors;                     // 0 marks '*'
    int factors[LOOM_ANN_MAX_FACTORS]; // identifier indices; only factors[0] may be split
} loom_ann_dim;

typedef struct loom_ann_tensor {
    int n_dims;
    int star;  // index of the '*' dim, -1 when none
    int star_col;  // 1-based column of the '*' in the text
    loom_ann_dim dims[LOOM_MAX_DIMS + 1];
} loom_ann_tensor;

typedef struct loom_annotation {
    int n_in, n_out;
    loom_ann_tensor tensors[LOOM_ANN_MAX_TENSORS];  // inputs then outputs
    int n_ids;
    loom_ann_ident ids[LOOM_ANN_MAX_IDS];
} loom_annotation;

// Parse `text`; on error returns LOOM_ERR_FORMAT with "annotation '<text>', column C: reason".
loom_status loom__ann_parse(const char *text, loom_annotation *ann);
// Bind every identifier's length from input shapes (and `sizes`, "g=2,r=3"): len[id] for each
// identifier, star_ndim the number of dims '*' covers (-1 when no input has '*').
loom_status loom__ann_bind(const loom_annotation *ann, const char *text, const char *sizes,
                           int n_in, const int *in_ndim,
                           const int64_t (*in_shapes)[LOOM_MAX_DIMS], int64_t *len,
                           int *star_ndim);
// Index of identifier `name`, or -1.
int loom__ann_find(const loom_annotation *ann, const char *name);

#endif // LOOM_IR_ANNOTATION_H
