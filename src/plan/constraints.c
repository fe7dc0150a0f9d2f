// Partition-constraint files (nnScaler AutoDist YAML): libyaml's events are loaded into a small
// node tree (depth-limited, aliases kept as links), then each entry is checked and copied out.

#include "loom/constraints.h"

#include "core/core.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <yaml.h>

// Deeper nesting is never a constraint file; the limit also bounds libyaml's per-token cost,
// which grows with the nesting depth.
#define MAX_DEPTH 64
// Aliases let a small file name the same list many times; this caps what that can expand to.
#define MAX_TOTAL_DIMS (1 << 20)
#define MAX_FILE_BYTES ((size_t)16 << 20)

struct loom_constraints {
    int n;
    loom_partition_constraint *items;
};

static const char *const KEYS[] = {"name", "parent_module", "allowed_partition_dims",
                                   "replica_allowed"};
enum { KEY_NAME, KEY_PARENT, KEY_DIMS, KEY_REPLICA, KEY_COUNT };
#define VALID_KEYS "name, parent_module, allowed_partition_dims, replica_allowed"

// ---- errors ------------------------------------------------------------------------------------

static loom_status fail_at(const char *src, int line, int col, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static loom_status fail_at(const char *src, int line, int col, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return loom__error(LOOM_ERR_FORMAT, "%s: line %d, column %d: %s", src, line, col, msg);
}

// libyaml marks are 0-based size_t.
static int pos1(size_t v) { return v >= (size_t)INT_MAX ? INT_MAX : (int)v + 1; }

// Line and column (1-based, counting UTF-8 characters) of byte `offset` in `text`.
static void offset_to_pos(const char *text, size_t len, size_t offset, int *line, int *col) {
    int l = 1, c = 1;
    for (size_t i = 0; i < offset && i < len; i++) {
        unsigned char ch = (unsigned char)text[i];
        if (ch == '\n') {
            if (i == 0 || text[i - 1] != '\r') l++;
            c = 1;
        } else if (ch == '\r') {
            l++;
            c = 1;
        } else if ((ch & 0xC0) != 0x80) {
            c++;
        }
    }
    *line = l;
    *col = c;
}

// ---- node tree -----------------------------------------------------------------------------------

enum { N_SCALAR, N_SEQ, N_MAP, N_ALIAS };

typedef struct ynode {
    unsigned char kind;
    unsigned char plain;  // scalar written plain (unquoted, not a block scalar): typed by YAML
    int line, col;        // 1-based start
    char *val;            // scalar value, NUL-terminated (may also hold NULs: use len)
    size_t len;
    int first, n;         // children in tree.kids (a mapping's are key, value, key, value, ...)
    int target;           // alias: the anchored node (never itself an alias)
} ynode;

typedef struct anchor_slot {
    char *name;  // NULL: empty slot
    int node;
} anchor_slot;

typedef struct open_node {
    int node;
    int height;    // size of the pending stack when the node opened
    char *anchor;  // registered when the node closes, so an alias can never point at an ancestor
} open_node;

typedef struct tree {
    const char *src;
    const char *text;
    size_t len;
    ynode *nodes;
    int n_nodes, cap_nodes;
    int *kids;  // children of closed containers, contiguous per container
    int n_kids, cap_kids;
    int *pending;  // nodes whose parent is still open
    int n_pending, cap_pending;
    open_node open[MAX_DEPTH];
    int n_open;
    anchor_slot *anchors;  // open addressing, power-of-two size
    size_t cap_anchors, n_anchors;
    int root;  // -1: the stream holds no document
} tree;

static void tree_free(tree *t) {
    for (int i = 0; i < t->n_nodes; i++) loom__free(t->nodes[i].val);
    loom__free(t->nodes);
    loom__free(t->kids);
    loom__free(t->pending);
    for (int i = 0; i < t->n_open; i++) loom__free(t->open[i].anchor);
    for (size_t i = 0; i < t->cap_anchors; i++) loom__free(t->anchors[i].name);
    loom__free(t->anchors);
}

// Room for at least `need` elements (need > *cap): the moved array, or NULL (array untouched).
static void *grow(void *p, int *cap, int need, size_t elem) {
    if (need > INT_MAX / 2) {
        loom__error(LOOM_ERR_NOMEM, "YAML document too large");
        return NULL;
    }
    int nc = *cap ? *cap : 64;
    while (nc < need) nc *= 2;
    void *q = loom__realloc(p, (size_t)nc * elem);
    if (q) *cap = nc;
    return q;
}

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static int anchor_find(const tree *t, const char *name) {
    if (!t->cap_anchors) return -1;
    size_t mask = t->cap_anchors - 1;
    for (size_t i = hash_str(name) & mask; t->anchors[i].name; i = (i + 1) & mask)
        if (strcmp(t->anchors[i].name, name) == 0) return t->anchors[i].node;
    return -1;
}

// Bind `name` (ownership taken) to `node`; a later anchor of the same name replaces the earlier,
// as YAML specifies.
static loom_status anchor_set(tree *t, char *name, int node) {
    if ((t->n_anchors + 1) * 2 > t->cap_anchors) {
        size_t nc = t->cap_anchors ? t->cap_anchors * 2 : 16;
        anchor_slot *na = loom__calloc(nc, sizeof *na);
        if (!na) {
            loom__free(name);
            return LOOM_ERR_NOMEM;
        }
        for (size_t i = 0; i < t->cap_anchors; i++) {
            if (!t->anchors[i].name) continue;
            size_t j = hash_str(t->anchors[i].name) & (nc - 1);
            while (na[j].name) j = (j + 1) & (nc - 1);
            na[j] = t->anchors[i];
        }
        loom__free(t->anchors);
        t->anchors = na;
        t->cap_anchors = nc;
    }
    size_t mask = t->cap_anchors - 1;
    size_t i = hash_str(name) & mask;
    for (; t->anchors[i].name; i = (i + 1) & mask) {
        if (strcmp(t->anchors[i].name, name) == 0) {
            t->anchors[i].node = node;
            loom__free(name);
            return LOOM_OK;
        }
    }
    t->anchors[i].name = name;
    t->anchors[i].node = node;
    t->n_anchors++;
    return LOOM_OK;
}

static int new_node(tree *t, int kind, yaml_mark_t mark) {
    if (t->n_nodes == t->cap_nodes) {
        ynode *q = grow(t->nodes, &t->cap_nodes, t->n_nodes + 1, sizeof *q);
        if (!q) return LOOM_ERR_NOMEM;
        t->nodes = q;
    }
    ynode *nd = &t->nodes[t->n_nodes];
    memset(nd, 0, sizeof *nd);
    nd->kind = (unsigned char)kind;
    nd->line = pos1(mark.line);
    nd->col = pos1(mark.column);
    nd->target = -1;
    return t->n_nodes++;
}

static loom_status push_pending(tree *t, int node) {
    if (t->n_pending == t->cap_pending) {
        int *q = grow(t->pending, &t->cap_pending, t->n_pending + 1, sizeof *q);
        if (!q) return LOOM_ERR_NOMEM;
        t->pending = q;
    }
    t->pending[t->n_pending++] = node;
    return LOOM_OK;
}

static loom_status register_anchor(tree *t, const yaml_char_t *anchor, int node) {
    if (!anchor) return LOOM_OK;
    char *name = loom__strdup((const char *)anchor);
    if (!name) return LOOM_ERR_NOMEM;
    return anchor_set(t, name, node);
}

static loom_status on_scalar(tree *t, const yaml_event_t *ev) {
    int i = new_node(t, N_SCALAR, ev->start_mark);
    if (i < 0) return i;
    size_t len = ev->data.scalar.length;
    char *val = loom__malloc(len + 1);
    if (!val) return LOOM_ERR_NOMEM;
    if (len) memcpy(val, ev->data.scalar.value, len);
    val[len] = '\0';
    t->nodes[i].val = val;
    t->nodes[i].len = len;
    t->nodes[i].plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    LOOM_CHECK(push_pending(t, i));
    return register_anchor(t, ev->data.scalar.anchor, i);
}

static loom_status on_alias(tree *t, const yaml_event_t *ev) {
    const char *name = (const char *)ev->data.alias.anchor;
    int target = name ? anchor_find(t, name) : -1;
    if (target < 0)
        return fail_at(t->src, pos1(ev->start_mark.line), pos1(ev->start_mark.column),
                       "alias '*%.64s' names no earlier anchor", name ? name : "");
    int i = new_node(t, N_ALIAS, ev->start_mark);
    if (i < 0) return i;
    t->nodes[i].target = target;
    return push_pending(t, i);
}

static loom_status on_start(tree *t, const yaml_event_t *ev, int kind, const yaml_char_t *anchor) {
    if (t->n_open == MAX_DEPTH)
        return fail_at(t->src, pos1(ev->start_mark.line), pos1(ev->start_mark.column),
                       "lists and mappings nested deeper than %d levels", MAX_DEPTH);
    int i = new_node(t, kind, ev->start_mark);
    if (i < 0) return i;
    char *name = NULL;
    if (anchor && !(name = loom__strdup((const char *)anchor))) return LOOM_ERR_NOMEM;
    t->open[t->n_open++] = (open_node){i, t->n_pending, name};
    return LOOM_OK;
}

static loom_status on_end(tree *t) {
    LOOM_ASSERT(t->n_open > 0);
    open_node o = t->open[--t->n_open];
    int count = t->n_pending - o.height;
    if (count > t->cap_kids - t->n_kids) {
        int *q = grow(t->kids, &t->cap_kids, t->n_kids + count, sizeof *q);
        if (!q) {
            loom__free(o.anchor);
            return LOOM_ERR_NOMEM;
        }
        t->kids = q;
    }
    if (count) memcpy(t->kids + t->n_kids, t->pending + o.height, (size_t)count * sizeof(int));
    t->nodes[o.node].first = t->n_kids;
    t->nodes[o.node].n = count;
    t->n_kids += count;
    t->n_pending = o.height;
    loom_status st = push_pending(t, o.node);
    if (st < 0) {
        loom__free(o.anchor);
        return st;
    }
    return o.anchor ? anchor_set(t, o.anchor, o.node) : LOOM_OK;
}

static loom_status yaml_failure(const tree *t, const yaml_parser_t *p) {
    if (p->error == YAML_MEMORY_ERROR)
        return loom__error(LOOM_ERR_NOMEM, "%s: out of memory while parsing YAML", t->src);
    const char *problem = p->problem ? p->problem : "unknown error";
    int line, col;
    if (p->error == YAML_READER_ERROR) {
        offset_to_pos(t->text, t->len, p->problem_offset, &line, &col);
        if (p->problem_value != -1)
            return fail_at(t->src, line, col, "malformed YAML: %s (#%X)", problem,
                           (unsigned)p->problem_value);
        return fail_at(t->src, line, col, "malformed YAML: %s", problem);
    }
    line = pos1(p->problem_mark.line);
    col = pos1(p->problem_mark.column);
    if (p->context)
        return fail_at(t->src, line, col, "malformed YAML: %s (%s at line %d, column %d)", problem,
                       p->context, pos1(p->context_mark.line), pos1(p->context_mark.column));
    return fail_at(t->src, line, col, "malformed YAML: %s", problem);
}

// Read the whole stream into `t`; t->root is the document's node, or -1 for an empty stream.
static loom_status load_tree(tree *t, yaml_parser_t *p) {
    int docs = 0;
    for (;;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(p, &ev)) return yaml_failure(t, p);
        loom_status st = LOOM_OK;
        int done = 0;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = 1;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++docs > 1)
                st = fail_at(t->src, pos1(ev.start_mark.line), pos1(ev.start_mark.column),
                             "a second YAML document; a constraint file holds one list");
            break;
        case YAML_SCALAR_EVENT:
            st = on_scalar(t, &ev);
            break;
        case YAML_ALIAS_EVENT:
            st = on_alias(t, &ev);
            break;
        case YAML_SEQUENCE_START_EVENT:
            st = on_start(t, &ev, N_SEQ, ev.data.sequence_start.anchor);
            break;
        case YAML_MAPPING_START_EVENT:
            st = on_start(t, &ev, N_MAP, ev.data.mapping_start.anchor);
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            st = on_end(t);
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
        if (st < 0) return st;
        if (done) break;
    }
    LOOM_ASSERT(t->n_open == 0 && t->n_pending <= 1);
    t->root = t->n_pending ? t->pending[0] : -1;
    return LOOM_OK;
}

// ---- checking entries ------------------------------------------------------------------------------

typedef struct walker {
    const tree *t;
    const char *src;
    long total_dims;
} walker;

static const ynode *node_at(const tree *t, int i) { return &t->nodes[i]; }

static const ynode *deref(const tree *t, int i) {
    const ynode *n = &t->nodes[i];
    return n->kind == N_ALIAS ? &t->nodes[n->target] : n;
}

static int kid(const tree *t, const ynode *n, int j) { return t->kids[n->first + j]; }

static int is_null(const ynode *n) {
    if (n->kind != N_SCALAR || !n->plain) return 0;
    return n->len == 0 || !strcmp(n->val, "~") || !strcmp(n->val, "null") ||
           !strcmp(n->val, "Null") || !strcmp(n->val, "NULL");
}

// A scalar's value, shortened and with control characters replaced, for messages.
static const char *show(const ynode *n, char *buf, size_t cap) {
    size_t keep = n->len < cap - 4 ? n->len : cap - 4;
    for (size_t i = 0; i < keep; i++) {
        unsigned char ch = (unsigned char)n->val[i];
        buf[i] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
    }
    if (keep < n->len)
        memcpy(buf + keep, "...", 4);
    else
        buf[keep] = '\0';
    return buf;
}

// What a node is, for "found ..." in messages.
static const char *describe(const ynode *n, char *buf, size_t cap) {
    char v[72];
    switch (n->kind) {
    case N_SEQ: return "a list";
    case N_MAP: return "a mapping";
    default: break;
    }
    if (is_null(n)) return n->len ? "null" : "an empty value";
    snprintf(buf, cap, n->plain ? "'%s'" : "the quoted string '%s'", show(n, v, sizeof v));
    return buf;
}

static char *dup_scalar(const ynode *n) {
    char *s = loom__malloc(n->len + 1);
    if (s) memcpy(s, n->val, n->len + 1);
    return s;
}

static loom_status set_name(walker *w, int vi, loom_partition_constraint *out) {
    const ynode *pos = node_at(w->t, vi), *v = deref(w->t, vi);
    char d[128];
    if (v->kind != N_SCALAR)
        return fail_at(w->src, pos->line, pos->col,
                       "name must be a string (the op signature, e.g. loom.linear), found %s",
                       describe(v, d, sizeof d));
    if (is_null(v) || v->len == 0) return fail_at(w->src, pos->line, pos->col, "name is empty");
    if (memchr(v->val, '\0', v->len))
        return fail_at(w->src, pos->line, pos->col, "name contains a NUL character");
    if (!(out->name = dup_scalar(v))) return LOOM_ERR_NOMEM;
    return LOOM_OK;
}

static loom_status set_parent(walker *w, int vi, loom_partition_constraint *out) {
    const ynode *pos = node_at(w->t, vi), *v = deref(w->t, vi);
    char d[128];
    if (v->kind != N_SCALAR)
        return fail_at(w->src, pos->line, pos->col,
                       "parent_module must be a string (a module path suffix such as h.3.attn), "
                       "found %s",
                       describe(v, d, sizeof d));
    if (is_null(v) || v->len == 0) return LOOM_OK;  // any module, as nnScaler reads ''
    if (memchr(v->val, '\0', v->len))
        return fail_at(w->src, pos->line, pos->col, "parent_module contains a NUL character");
    if (v->val[0] == '.' || v->val[v->len - 1] == '.' || strstr(v->val, ".."))
        return fail_at(w->src, pos->line, pos->col,
                       "parent_module '%s' has an empty component (a leading, trailing or "
                       "double dot), so it can match no module",
                       show(v, d, 72));
    if (!(out->parent_module = dup_scalar(v))) return LOOM_ERR_NOMEM;
    return LOOM_OK;
}

static loom_status set_replica(walker *w, int vi, loom_partition_constraint *out) {
    static const char *const yes[] = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"};
    static const char *const no[] = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"};
    const ynode *pos = node_at(w->t, vi), *v = deref(w->t, vi);
    if (v->kind == N_SCALAR && v->plain) {
        for (size_t i = 0; i < sizeof yes / sizeof *yes; i++) {
            if (!strcmp(v->val, yes[i])) {
                out->replica_allowed = 1;
                return LOOM_OK;
            }
            if (!strcmp(v->val, no[i])) {
                out->replica_allowed = 0;
                return LOOM_OK;
            }
        }
    }
    char d[128];
    return fail_at(w->src, pos->line, pos->col, "replica_allowed must be true or false, found %s",
                   describe(v, d, sizeof d));
}

static void skip_blanks(const char *s, size_t len, size_t *i) {
    while (*i < len && (s[*i] == ' ' || s[*i] == '\t')) (*i)++;
}

// An optionally signed decimal integer at s[*i]; saturates at +-1e9 (outside every valid range).
static int scan_int(const char *s, size_t len, size_t *i, int *out) {
    size_t k = *i;
    int neg = 0, v = 0;
    if (k < len && (s[k] == '+' || s[k] == '-')) neg = s[k++] == '-';
    if (k >= len || s[k] < '0' || s[k] > '9') return 0;
    for (; k < len && s[k] >= '0' && s[k] <= '9'; k++)
        v = v < 100000000 ? v * 10 + (s[k] - '0') : 1000000000;
    *out = neg ? -v : v;
    *i = k;
    return 1;
}

// "input,dim" with optional blanks around either number.
static int parse_pair(const char *s, size_t len, int *input, int *dim) {
    size_t i = 0;
    skip_blanks(s, len, &i);
    if (!scan_int(s, len, &i, input)) return 0;
    skip_blanks(s, len, &i);
    if (i >= len || s[i] != ',') return 0;
    i++;
    skip_blanks(s, len, &i);
    if (!scan_int(s, len, &i, dim)) return 0;
    skip_blanks(s, len, &i);
    return i == len;
}

static loom_status list_int(walker *w, int ei, int *out) {
    const ynode *pos = node_at(w->t, ei), *e = deref(w->t, ei);
    size_t i = 0;
    if (e->kind == N_SCALAR && e->plain && scan_int(e->val, e->len, &i, out) && i == e->len)
        return LOOM_OK;
    char d[128];
    return fail_at(w->src, pos->line, pos->col,
                   "allowed_partition_dims element %s is not an integer",
                   describe(e, d, sizeof d));
}

static loom_status set_dim(walker *w, int ii, loom_partition_dim *out) {
    const ynode *pos = node_at(w->t, ii), *v = deref(w->t, ii);
    char d[128];
    int input = 0, dim = 0;
    if (v->kind == N_SCALAR) {
        if (!parse_pair(v->val, v->len, &input, &dim))
            return fail_at(w->src, pos->line, pos->col,
                           "allowed_partition_dims entry '%s' is not 'input,dim'",
                           show(v, d, 72));
    } else if (v->kind == N_SEQ) {
        if (v->n != 2)
            return fail_at(w->src, pos->line, pos->col,
                           "allowed_partition_dims entry is a list of %d elements; expected "
                           "[input, dim]",
                           v->n);
        LOOM_CHECK(list_int(w, kid(w->t, v, 0), &input));
        LOOM_CHECK(list_int(w, kid(w->t, v, 1), &dim));
    } else {
        return fail_at(w->src, pos->line, pos->col,
                       "allowed_partition_dims entry must be an 'input,dim' string or an "
                       "[input, dim] list, found %s",
                       describe(v, d, sizeof d));
    }
    if (input < 0 || input > LOOM_CONSTRAINT_MAX_INPUT)
        return fail_at(w->src, pos->line, pos->col,
                       "allowed_partition_dims entry (%d, %d): input index %d is outside [0, %d]",
                       input, dim, input, LOOM_CONSTRAINT_MAX_INPUT);
    if (dim < LOOM_CONSTRAINT_MIN_DIM || dim > LOOM_CONSTRAINT_MAX_DIM)
        return fail_at(w->src, pos->line, pos->col,
                       "allowed_partition_dims entry (%d, %d): dim %d is outside [%d, %d]", input,
                       dim, dim, LOOM_CONSTRAINT_MIN_DIM, LOOM_CONSTRAINT_MAX_DIM);
    out->input = input;
    out->dim = dim;
    return LOOM_OK;
}

static loom_status set_dims(walker *w, int vi, loom_partition_constraint *out) {
    const ynode *pos = node_at(w->t, vi), *v = deref(w->t, vi);
    char d[128];
    if (is_null(v))
        return fail_at(w->src, pos->line, pos->col,
                       "allowed_partition_dims is %s; write [] to allow no partition, or leave "
                       "the key out to allow any",
                       describe(v, d, sizeof d));
    if (v->kind != N_SEQ)
        return fail_at(w->src, pos->line, pos->col,
                       "allowed_partition_dims must be a list of 'input,dim' strings or "
                       "[input, dim] lists, found %s",
                       describe(v, d, sizeof d));
    if (w->total_dims + v->n > MAX_TOTAL_DIMS)
        return fail_at(w->src, pos->line, pos->col,
                       "more than %d allowed partition dims in the file (aliases repeating a "
                       "long list?)",
                       MAX_TOTAL_DIMS);
    w->total_dims += v->n;
    out->n_allowed = v->n;
    if (v->n == 0) return LOOM_OK;
    loom_partition_dim *dims = loom__calloc((size_t)v->n, sizeof *dims);
    if (!dims) return LOOM_ERR_NOMEM;
    out->allowed = dims;  // owned by the entry from here on, freed with it on error
    for (int j = 0; j < v->n; j++) LOOM_CHECK(set_dim(w, kid(w->t, v, j), &dims[j]));
    return LOOM_OK;
}

static loom_status parse_entry(walker *w, int ei, int number, loom_partition_constraint *out) {
    const tree *t = w->t;
    const ynode *pos = node_at(t, ei), *m = deref(t, ei);
    out->line = pos->line;
    out->column = pos->col;
    out->n_allowed = -1;
    out->replica_allowed = 1;
    char d[128];
    if (m->kind != N_MAP)
        return fail_at(w->src, pos->line, pos->col,
                       "constraint entry %d must be a mapping (name: ..., parent_module: ..., "
                       "...), found %s",
                       number, describe(m, d, sizeof d));
    int seen[KEY_COUNT] = {-1, -1, -1, -1};
    for (int j = 0; j + 1 < m->n; j += 2) {
        int ki = kid(t, m, j), vi = kid(t, m, j + 1);
        const ynode *kpos = node_at(t, ki), *k = deref(t, ki);
        if (k->kind != N_SCALAR)
            return fail_at(w->src, kpos->line, kpos->col,
                           "a key of a constraint entry must be a string, found %s",
                           describe(k, d, sizeof d));
        int which = -1;
        for (int q = 0; q < KEY_COUNT; q++)
            if (k->len == strlen(KEYS[q]) && !memcmp(k->val, KEYS[q], k->len)) which = q;
        if (which < 0)
            return fail_at(w->src, kpos->line, kpos->col,
                           "unknown key '%s' in a constraint entry (valid keys: " VALID_KEYS ")",
                           show(k, d, 72));
        if (seen[which] >= 0) {
            const ynode *first = node_at(t, seen[which]);
            return fail_at(w->src, kpos->line, kpos->col,
                           "duplicate key '%s' in a constraint entry (first at line %d, column %d)",
                           KEYS[which], first->line, first->col);
        }
        seen[which] = ki;
        switch (which) {
        case KEY_NAME: LOOM_CHECK(set_name(w, vi, out)); break;
        case KEY_PARENT: LOOM_CHECK(set_parent(w, vi, out)); break;
        case KEY_DIMS: LOOM_CHECK(set_dims(w, vi, out)); break;
        default: LOOM_CHECK(set_replica(w, vi, out)); break;
        }
    }
    if (seen[KEY_NAME] < 0)
        return fail_at(w->src, pos->line, pos->col,
                       "constraint entry %d has no 'name' (the op signature, e.g. "
                       "name: loom.linear)",
                       number);
    return LOOM_OK;
}

static loom_status walk(const tree *t, struct loom_constraints *c) {
    if (t->root < 0) return LOOM_OK;  // empty file
    const ynode *pos = node_at(t, t->root), *root = deref(t, t->root);
    if (is_null(root)) return LOOM_OK;  // "---" alone, or "~"
    char d[128];
    if (root->kind != N_SEQ)
        return fail_at(t->src, pos->line, pos->col,
                       "the top level must be a list of constraint entries ('- name: ...'), "
                       "found %s",
                       describe(root, d, sizeof d));
    if (root->n == 0) return LOOM_OK;
    c->items = loom__calloc((size_t)root->n, sizeof *c->items);
    if (!c->items) return LOOM_ERR_NOMEM;
    walker w = {t, t->src, 0};
    for (int i = 0; i < root->n; i++) {
        c->n = i + 1;  // counted before filling, so a failure frees the partial entry
        LOOM_CHECK(parse_entry(&w, kid(t, root, i), i + 1, &c->items[i]));
    }
    return LOOM_OK;
}

// ---- public API ------------------------------------------------------------------------------------

void loom_constraints_free(loom_constraints_t c) {
    if (!c) return;
    for (int i = 0; i < c->n; i++) {
        loom__free((void *)c->items[i].name);
        loom__free((void *)c->items[i].parent_module);
        loom__free((void *)c->items[i].allowed);
    }
    loom__free(c->items);
    loom__free(c);
}

loom_status loom_constraints_parse(const char *text, size_t len, const char *source_name,
                                   loom_constraints_t *out) {
    if (out) *out = NULL;
    const char *src = source_name ? source_name : "<string>";
    if (!out || (!text && len))
        return loom__error(LOOM_ERR_INVALID, "loom_constraints_parse(%s): NULL %s", src,
                           out ? "text" : "out");
    if (len > MAX_FILE_BYTES)
        return loom__error(LOOM_ERR_FORMAT,
                           "%s: line 1, column 1: the text is over the %zu MiB limit of a "
                           "constraint file",
                           src, MAX_FILE_BYTES >> 20);
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p))
        return loom__error(LOOM_ERR_NOMEM, "%s: out of memory starting the YAML parser", src);
    yaml_parser_set_input_string(&p, (const unsigned char *)(text ? text : ""), len);
    tree t;
    memset(&t, 0, sizeof t);
    t.src = src;
    t.text = text;
    t.len = len;
    t.root = -1;
    loom_status st = load_tree(&t, &p);
    yaml_parser_delete(&p);
    struct loom_constraints *c = NULL;
    if (st == LOOM_OK) {
        c = loom__calloc(1, sizeof *c);
        st = c ? walk(&t, c) : LOOM_ERR_NOMEM;
    }
    tree_free(&t);
    if (st < 0) {
        loom_constraints_free(c);
        return st;
    }
    *out = c;
    return LOOM_OK;
}

loom_status loom_constraints_load(const char *path, loom_constraints_t *out) {
    if (out) *out = NULL;
    if (!path || !out)
        return loom__error(LOOM_ERR_INVALID, "loom_constraints_load: NULL %s",
                           path ? "out" : "path");
    FILE *f = fopen(path, "rb");
    if (!f)
        return loom__error(LOOM_ERR_IO, "%s: cannot open partition constraints: %s", path,
                           strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    int err = 0;
    for (;;) {
        if (n == cap) {
            if (cap > MAX_FILE_BYTES) break;  // parse reports the size
            size_t nc = cap ? cap * 2 : 4096;
            if (nc > MAX_FILE_BYTES + 1) nc = MAX_FILE_BYTES + 1;
            char *q = loom__realloc(buf, nc);
            if (!q) {
                loom__free(buf);
                fclose(f);
                return LOOM_ERR_NOMEM;
            }
            buf = q;
            cap = nc;
        }
        errno = 0;
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) err = errno ? errno : EIO;
            break;
        }
    }
    fclose(f);
    if (err) {
        loom__free(buf);
        return loom__error(LOOM_ERR_IO, "%s: cannot read partition constraints: %s", path,
                           strerror(err));
    }
    loom_status st = loom_constraints_parse(buf, n, path, out);
    loom__free(buf);
    return st;
}

loom_status loom_constraints_create(const loom_partition_constraint *items, int n,
                                    loom_constraints_t *out) {
    if (out) *out = NULL;
    if (!out || n < 0 || (n > 0 && !items))
        return loom__error(LOOM_ERR_INVALID, "loom_constraints_create: NULL out or items, or "
                           "n < 0");
    for (int i = 0; i < n; i++)
        if (!items[i].name || (items[i].n_allowed > 0 && !items[i].allowed))
            return loom__error(LOOM_ERR_INVALID, "loom_constraints_create: entry %d has no %s",
                               i, items[i].name ? "allowed dims for its n_allowed" : "name");
    struct loom_constraints *c = loom__calloc(1, sizeof *c);
    if (!c) return LOOM_ERR_NOMEM;
    c->items = n ? loom__calloc((size_t)n, sizeof *c->items) : NULL;
    if (n && !c->items) return loom_constraints_free(c), LOOM_ERR_NOMEM;
    for (int i = 0; i < n; i++) {
        loom_partition_constraint *d = &c->items[i];
        c->n = i + 1;  // counted before filling, so a failure frees the partial entry
        *d = items[i];
        d->parent_module = NULL, d->allowed = NULL;
        d->name = loom__strdup(items[i].name);
        if (items[i].parent_module && items[i].parent_module[0])
            d->parent_module = loom__strdup(items[i].parent_module);
        if (items[i].n_allowed > 0) {
            loom_partition_dim *a = loom__malloc((size_t)items[i].n_allowed * sizeof *a);
            if (a) memcpy(a, items[i].allowed, (size_t)items[i].n_allowed * sizeof *a);
            d->allowed = a;
        }
        if (!d->name || (items[i].parent_module && items[i].parent_module[0] &&
                         !d->parent_module) || (items[i].n_allowed > 0 && !d->allowed)) {
            loom_constraints_free(c);
            return LOOM_ERR_NOMEM;
        }
    }
    *out = c;
    return LOOM_OK;
}

int loom_constraints_count(loom_constraints_t c) { return c ? c->n : 0; }

const loom_partition_constraint *loom_constraints_at(loom_constraints_t c, int i) {
    return c && i >= 0 && i < c->n ? &c->items[i] : NULL;
}

int loom_module_matches(const char *module_path, const char *pattern) {
    if (!pattern || !*pattern) return 1;
    if (!module_path) module_path = "";
    size_t lp = strlen(module_path), lq = strlen(pattern);
    if (lq > lp || memcmp(module_path + lp - lq, pattern, lq) != 0) return 0;
    return lq == lp || module_path[lp - lq - 1] == '.';
}

int loom_constraints_find(loom_constraints_t c, const char *signature, const char *module_path,
                          int *idx, int cap) {
    if (!c || !signature) return 0;
    int count = 0;
    for (int i = 0; i < c->n; i++) {
        const loom_partition_constraint *pc = &c->items[i];
        if (strcmp(pc->name, signature) != 0) continue;
        if (!loom_module_matches(module_path, pc->parent_module)) continue;
        if (idx && count < cap) idx[count] = i;
        count++;
    }
    return count;
}
