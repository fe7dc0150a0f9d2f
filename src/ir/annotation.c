// Annotation language: parser, well-formedness checks, and shape inference from bound dims.

#include "ir/annotation.h"

#include "core/core.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

// ---- parser -------------------------------------------------------------------------------------

typedef struct parser {
    const char *text;
    const char *p;
    loom_annotation *ann;
} parser;

static loom_status parse_error(const parser *ps, const char *what) {
    return loom__error(LOOM_ERR_FORMAT, "annotation '%s', column %d: %s", ps->text,
                       (int)(ps->p - ps->text) + 1, what);
}

static void skip_spaces(parser *ps) {
    while (*ps->p == ' ' || *ps->p == '\t') ps->p++;
}

static int is_ident_start(char c) { return isalpha((unsigned char)c) || c == '_'; }
static int is_ident_char(char c) { return isalnum((unsigned char)c) || c == '_'; }

// Intern identifier `name` with `kind`; the same name must keep the same kind everywhere.
static loom_status intern_ident(parser *ps, const char *name, size_t len, loom_ann_kind kind,
                                int64_t literal, int *out) {
    loom_annotation *ann = ps->ann;
    char buf[16];
    if (len >= sizeof buf) return parse_error(ps, "identifier longer than 15 characters");
    memcpy(buf, name, len);
    buf[len] = '\0';
    if (literal == 0) {
        for (int i = 0; i < ann->n_ids; i++) {
            if (strcmp(ann->ids[i].name, buf) == 0) {
                if (ann->ids[i].kind != kind) {
                    char msg[96];
                    snprintf(msg, sizeof msg,
                             "identifier '%s' is used with different suffixes ('+', '^' or none)",
                             buf);
                    return parse_error(ps, msg);
                }
                *out = i;
                return LOOM_OK;
            }
        }
    }
    if (ann->n_ids == LOOM_ANN_MAX_IDS) return parse_error(ps, "too many identifiers");
    loom_ann_ident *id = &ann->ids[ann->n_ids];
    memcpy(id->name, buf, len + 1);
    id->kind = kind;
    id->literal = literal;
    *out = ann->n_ids++;
    return LOOM_OK;
}

// One factor: identifier with optional '+'/'^' suffix, or a positive numeric literal.
static loom_status parse_factor(parser *ps, int *out) {
    const char *start = ps->p;
    if (isdigit((unsigned char)*ps->p)) {
        int64_t v = 0;
        while (isdigit((unsigned char)*ps->p)) {
            v = v * 10 + (*ps->p - '0');
            if (v > ((int64_t)1 << 40)) return parse_error(ps, "numeric literal too large");
            ps->p++;
        }
        if (v == 0) return parse_error(ps, "numeric literal must be positive");
        if (is_ident_char(*ps->p)) return parse_error(ps, "identifier cannot start with a digit");
        return intern_ident(ps, start, (size_t)(ps->p - start), LOOM_ANN_FROZEN, v, out);
    }
    if (!is_ident_start(*ps->p)) return parse_error(ps, "expected an identifier, '*' or '('");
    while (is_ident_char(*ps->p)) ps->p++;
    size_t len = (size_t)(ps->p - start);
    loom_ann_kind kind = LOOM_ANN_SPLIT;
    if (*ps->p == '+') kind = LOOM_ANN_REDUCE, ps->p++;
    else if (*ps->p == '^') kind = LOOM_ANN_FROZEN, ps->p++;
    return intern_ident(ps, start, len, kind, 0, out);
}

static loom_status parse_tensor(parser *ps, loom_ann_tensor *t) {
    t->n_dims = 0;
    t->star = -1;
    for (;;) {
        skip_spaces(ps);
        char c = *ps->p;
        if (c == ',' || c == '\0' || c == '-') break;
        if (t->n_dims == LOOM_MAX_DIMS + 1) return parse_error(ps, "too many dims in one tensor");
        loom_ann_dim *d = &t->dims[t->n_dims];
        d->n_factors = 0;
        if (c == '*') {
            if (t->star >= 0) return parse_error(ps, "'*' may appear once per tensor");
            t->star = t->n_dims;
            t->star_col = (int)(ps->p - ps->text) + 1;
            ps->p++;
        } else if (c == '(') {
            ps->p++;
            for (;;) {
                skip_spaces(ps);
                if (*ps->p == ')') break;
                if (*ps->p == '(') return parse_error(ps, "nested parentheses");
                if (*ps->p == '\0' || *ps->p == ',' || *ps->p == '-')
                    return parse_error(ps, "unclosed '('");
                if (d->n_factors == LOOM_ANN_MAX_FACTORS)
                    return parse_error(ps, "too many identifiers in one product");
                LOOM_CHECK(parse_factor(ps, &d->factors[d->n_factors]));
                d->n_factors++;
            }
            if (d->n_factors == 0) return parse_error(ps, "empty parentheses");
            ps->p++;
        } else if (c == ')') {
            return parse_error(ps, "')' without '('");
        } else {
            LOOM_CHECK(parse_factor(ps, &d->factors[0]));
            d->n_factors = 1;
        }
        if (*ps->p != ' ' && *ps->p != '\t' && *ps->p != ',' && *ps->p != '\0' && *ps->p != '-')
            return parse_error(ps, "dims must be separated by spaces");
        t->n_dims++;
    }
    if (t->n_dims == 0) return parse_error(ps, "empty tensor");
    if (t->n_dims - (t->star >= 0) > LOOM_MAX_DIMS) return parse_error(ps, "too many dims");
    // An identifier may appear once per tensor.
    for (int i = 0; i < t->n_dims; i++)
        for (int fi = 0; fi < t->dims[i].n_factors; fi++)
            for (int j = i; j < t->n_dims; j++)
                for (int fj = (j == i ? fi + 1 : 0); fj < t->dims[j].n_factors; fj++) {
                    int a = t->dims[i].factors[fi], b = t->dims[j].factors[fj];
                    if (a == b) {
                        char msg[80];
                        snprintf(msg, sizeof msg, "identifier '%s' appears twice in one tensor",
                                 ps->ann->ids[a].name);
                        return parse_error(ps, msg);
                    }
                }
    return LOOM_OK;
}

loom_status loom__ann_parse(const char *text, loom_annotation *ann) {
    memset(ann, 0, sizeof *ann);
    parser ps = {text, text, ann};
    int n = 0, arrow_at = -1;
    for (;;) {
        if (n == LOOM_ANN_MAX_TENSORS) return parse_error(&ps, "too many tensors");
        skip_spaces(&ps);
        // An op may have no outputs only in theory; every loom op has at least one.
        LOOM_CHECK(parse_tensor(&ps, &ann->tensors[n]));
        n++;
        skip_spaces(&ps);
        if (*ps.p == ',') {
            ps.p++;
            continue;
        }
        if (*ps.p == '-') {
            if (ps.p[1] != '>') return parse_error(&ps, "expected '->'");
            if (arrow_at >= 0) return parse_error(&ps, "more than one '->'");
            arrow_at = n;
            ps.p += 2;
            continue;
        }
        if (*ps.p == '\0') break;
        return parse_error(&ps, "unexpected character");
    }
    if (arrow_at < 0) return parse_error(&ps, "missing '->' between inputs and outputs");
    ann->n_in = arrow_at;
    ann->n_out = n - arrow_at;
    for (int t = ann->n_in; t < n; t++) {
        if (ann->tensors[t].star < 0) continue;
        int found = 0;
        for (int s = 0; s < ann->n_in; s++) found |= ann->tensors[s].star >= 0;
        if (!found)
            return loom__error(LOOM_ERR_FORMAT,
                               "annotation '%s', column %d: an output has '*' but no input does",
                               text, ann->tensors[t].star_col);
    }
    return LOOM_OK;
}

int loom__ann_find(const loom_annotation *ann, const char *name) {
    for (int i = 0; i < ann->n_ids; i++)
        if (!ann->ids[i].literal && strcmp(ann->ids[i].name, name) == 0) return i;
    return -1;
}

loom_status loom_annotation_check(const char *annotation) {
    loom_annotation ann;
    return loom__ann_parse(annotation, &ann);
}

// ---- shape inference ----------------------------------------------------------------------------

typedef struct binder {
    const char *text;
    const loom_annotation *ann;
    int64_t size[LOOM_ANN_MAX_IDS];  // 0 = unknown
    int star_ndim;                   // -1 = unknown
    int64_t star_shape[LOOM_MAX_DIMS];
} binder;

static void format_shape(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
}

static loom_status bind_sizes_string(binder *b, const char *sizes) {
    if (!sizes) return LOOM_OK;
    const char *p = sizes;
    while (*p) {
        char name[16];
        long long v;
        int used = 0;
        if (sscanf(p, "%15[A-Za-z0-9_]=%lld%n", name, &v, &used) != 2 || v <= 0)
            return loom__error(LOOM_ERR_INVALID, "annotation sizes '%s': expected name=length",
                               sizes);
        int id = loom__ann_find(b->ann, name);
        if (id < 0)
            return loom__error(LOOM_ERR_INVALID,
                               "annotation sizes '%s': '%s' is not an identifier of '%s'", sizes,
                               name, b->text);
        b->size[id] = v;
        p += used;
        if (*p == ',') p++;
    }
    return LOOM_OK;
}

// Bind the dims of input tensor `t` (shape `shape`); `*progress` set when something new is bound.
// With `final` set, a product that still cannot be resolved is an error.
static loom_status bind_tensor(binder *b, int t, int ndim, const int64_t *shape, int final,
                               int *progress) {
    const loom_ann_tensor *at = &b->ann->tensors[t];
    int named = at->n_dims - (at->star >= 0);
    char sbuf[96];
    if ((at->star < 0 && ndim != named) || (at->star >= 0 && ndim < named)) {
        format_shape(sbuf, sizeof sbuf, ndim, shape);
        return loom__error(LOOM_ERR_SHAPE, "input %d has shape %s but annotation '%s' wants %s%d dims",
                           t, sbuf, b->text, at->star >= 0 ? "at least " : "", named);
    }
    int star_len = ndim - named;
    int pos = 0;
    for (int d = 0; d < at->n_dims; d++) {
        const loom_ann_dim *dim = &at->dims[d];
        if (dim->n_factors == 0) {
            if (b->star_ndim < 0) {
                b->star_ndim = star_len;
                memcpy(b->star_shape, shape + pos, (size_t)star_len * sizeof(int64_t));
            } else if (b->star_ndim != star_len ||
                       memcmp(b->star_shape, shape + pos, (size_t)star_len * sizeof(int64_t))) {
                format_shape(sbuf, sizeof sbuf, ndim, shape);
                return loom__error(LOOM_ERR_SHAPE,
                                   "input %d has shape %s whose '*' dims differ from another "
                                   "input's (annotation '%s')", t, sbuf, b->text);
            }
            pos += star_len;
            continue;
        }
        int64_t len = shape[pos];
        int64_t known = 1;
        int unknown = -1, n_unknown = 0;
        for (int f = 0; f < dim->n_factors; f++) {
            int id = dim->factors[f];
            int64_t s = b->ann->ids[id].literal ? b->ann->ids[id].literal : b->size[id];
            if (s) known *= s;
            else unknown = id, n_unknown++;
        }
        if (n_unknown == 0) {
            if (known != len) {
                format_shape(sbuf, sizeof sbuf, ndim, shape);
                const char *name = dim->n_factors == 1 ? b->ann->ids[dim->factors[0]].name : "(...)";
                return loom__error(LOOM_ERR_SHAPE,
                                   "input %d has shape %s: dim %d is %lld but '%s' is %lld in "
                                   "annotation '%s'", t, sbuf, pos, (long long)len, name,
                                   (long long)known, b->text);
            }
        } else if (n_unknown == 1) {
            if (len % known != 0) {
                format_shape(sbuf, sizeof sbuf, ndim, shape);
                return loom__error(LOOM_ERR_SHAPE,
                                   "input %d has shape %s: dim %d (%lld) is not divisible into "
                                   "'%s' with the other factors %lld (annotation '%s')",
                                   t, sbuf, pos, (long long)len, b->ann->ids[unknown].name,
                                   (long long)known, b->text);
            }
            b->size[unknown] = len / known;
            *progress = 1;
        } else if (final) {
            return loom__error(LOOM_ERR_SHAPE,
                               "annotation '%s': dim %d of input %d is a product with %d unknown "
                               "lengths; give all but one of them", b->text, pos, t, n_unknown);
        }
        pos++;
    }
    return LOOM_OK;
}

// Bind single dims first, then products, until nothing new is learned; then check all.
static loom_status bind_inputs(binder *b, int n_in, const int *in_ndim,
                               const int64_t (*in_shapes)[LOOM_MAX_DIMS]) {
    for (int round = 0;; round++) {
        int progress = 0;
        for (int t = 0; t < n_in; t++)
            LOOM_CHECK(bind_tensor(b, t, in_ndim[t], in_shapes[t], 0, &progress));
        if (!progress || round > LOOM_ANN_MAX_IDS) break;
    }
    int unused = 0;
    for (int t = 0; t < n_in; t++) LOOM_CHECK(bind_tensor(b, t, in_ndim[t], in_shapes[t], 1, &unused));
    return LOOM_OK;
}

loom_status loom__ann_bind(const loom_annotation *ann, const char *text, const char *sizes,
                           int n_in, const int *in_ndim,
                           const int64_t (*in_shapes)[LOOM_MAX_DIMS], int64_t *len,
                           int *star_ndim) {
    binder b = {.text = text, .ann = ann, .star_ndim = -1};
    LOOM_CHECK(bind_sizes_string(&b, sizes));
    LOOM_CHECK(bind_inputs(&b, n_in, in_ndim, in_shapes));
    for (int i = 0; i < ann->n_ids; i++) len[i] = ann->ids[i].literal ? ann->ids[i].literal : b.size[i];
    *star_ndim = b.star_ndim;
    return LOOM_OK;
}

loom_status loom_annotation_infer(const char *annotation, const char *sizes, int n_in,
                                  const int *in_ndim, const int64_t (*in_shapes)[LOOM_MAX_DIMS],
                                  int *n_out, int *out_ndim,
                                  int64_t (*out_shapes)[LOOM_MAX_DIMS]) {
    loom_annotation ann;
    LOOM_CHECK(loom__ann_parse(annotation, &ann));
    for (int t = 0; t < n_in; t++)
        if (in_ndim[t] < 0 || in_ndim[t] > LOOM_MAX_DIMS)
            return loom__error(LOOM_ERR_SHAPE, "annotation '%s': input %d has %d dims (at most "
                               "%d)", annotation, t, in_ndim[t], LOOM_MAX_DIMS);
    if (n_in != ann.n_in)
        return loom__error(LOOM_ERR_SHAPE, "annotation '%s' has %d inputs, got %d", annotation,
                           ann.n_in, n_in);
    binder b = {.text = annotation, .ann = &ann, .star_ndim = -1};
    LOOM_CHECK(bind_sizes_string(&b, sizes));
    LOOM_CHECK(bind_inputs(&b, n_in, in_ndim, in_shapes));
    *n_out = ann.n_out;
    for (int o = 0; o < ann.n_out; o++) {
        const loom_ann_tensor *at = &ann.tensors[ann.n_in + o];
        int nd = 0;
        for (int d = 0; d < at->n_dims; d++) {
            const loom_ann_dim *dim = &at->dims[d];
            if (dim->n_factors == 0) {
                for (int s = 0; s < b.star_ndim; s++) out_shapes[o][nd++] = b.star_shape[s];
                continue;
            }
            int64_t len = 1;
            for (int f = 0; f < dim->n_factors; f++) {
                int id = dim->factors[f];
                int64_t s = ann.ids[id].literal ? ann.ids[id].literal : b.size[id];
                if (!s)
                    return loom__error(LOOM_ERR_SHAPE,
                                       "annotation '%s': output identifier '%s' has no length "
                                       "(it appears in no input and no size binds it)",
                                       annotation, ann.ids[id].name);
                len *= s;
            }
            if (nd == LOOM_MAX_DIMS)
                return loom__error(LOOM_ERR_SHAPE, "annotation '%s': output %d has too many dims",
                                   annotation, o);
            out_shapes[o][nd++] = len;
        }
        out_ndim[o] = nd;
    }
    return LOOM_OK;
}
