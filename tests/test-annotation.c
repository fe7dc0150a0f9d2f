// Tests of the dimension-annotation language: every op-table annotation and the design examples
// parse; malformed text fails with a column and a reason; shape inference binds and checks dims.

#include "testutil.h"

#include "ir/annotation.h"
#include "ir/ir.h"
#include "loom/graph.h"
#include "loom/status.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int has(const char *msg, const char *part) { return strstr(msg, part) != NULL; }

// Column number from "column C" in an error message, or -1.
static int column_of(const char *msg) {
    const char *p = strstr(msg, "column ");
    int c = -1;
    if (p && sscanf(p + 7, "%d", &c) != 1) c = -1;
    return c;
}

// ---- well-formed ------------------------------------------------------------------------------

static void check_ok(const char *text) {
    loom_status st = loom_annotation_check(text);
    CHECK_MSG(st == LOOM_OK, "'%s' should parse: %s", text, loom_last_error());
}

static void test_op_table_parses(void) {
    // Every row of the op table (whatever ops exist now) parses, and the parse agrees with the
    // row's input types: one annotated input tensor per typed input.
    for (int op = 0; op < LOOM_OP_COUNT; op++) {
        const loom_op_def *def = loom__op_def((loom_op)op);
        CHECK_MSG(def->signature && def->annotation && def->in_types, "op %d has an empty row", op);
        if (!def->annotation) continue;
        check_ok(def->annotation);
        loom_annotation ann;
        CHECK_OK(loom__ann_parse(def->annotation, &ann));
        CHECK_MSG(ann.n_in == (int)strlen(def->in_types),
                  "%s: annotation '%s' has %d inputs but in_types '%s' has %d", def->signature,
                  def->annotation, ann.n_in, def->in_types, (int)strlen(def->in_types));
        CHECK_MSG(ann.n_out >= 1, "%s: no outputs", def->signature);
        CHECK_MSG(strncmp(def->signature, "loom.", 5) == 0, "signature '%s'", def->signature);
    }
}

static void test_design_examples(void) {
    check_ok("* k+, n k+ -> * n");
    check_ok("*, v+ e -> * e");
    check_ok("b (g r) s d^, b g t d^, b g t d^ -> b (g r) s d^");
    check_ok("* k^, n k^, n -> * n");
    check_ok("a->b");                       // no spaces around the arrow
    check_ok("  a ,\tb   ->  a b  ");      // extra blanks and tabs
    check_ok("* a b c d e f -> *");         // 6 named dims plus '*'
    check_ok("a, a, a, a, a, a, a -> a");   // 8 tensors, the most allowed
    check_ok("(2 d) -> d");
    check_ok("a_1 -> a_1");

    // The structure of a parse.
    loom_annotation ann;
    CHECK_OK(loom__ann_parse("* k+, n k+ -> * n", &ann));
    CHECK(ann.n_in == 2 && ann.n_out == 1);
    CHECK(ann.tensors[0].n_dims == 2 && ann.tensors[0].star == 0);
    CHECK(ann.tensors[1].n_dims == 2 && ann.tensors[1].star == -1);
    CHECK(ann.tensors[2].n_dims == 2 && ann.tensors[2].star == 0);
    int k = loom__ann_find(&ann, "k"), n = loom__ann_find(&ann, "n");
    CHECK(k >= 0 && n >= 0 && k != n);
    if (k >= 0) CHECK(ann.ids[k].kind == LOOM_ANN_REDUCE);
    if (n >= 0) CHECK(ann.ids[n].kind == LOOM_ANN_SPLIT);
    CHECK(loom__ann_find(&ann, "m") == -1);
    CHECK(ann.n_ids == 2);  // k and n, each interned once

    CHECK_OK(loom__ann_parse("b (g r) s d^, b g t d^, b g t d^ -> b (g r) s d^", &ann));
    CHECK(ann.n_in == 3 && ann.n_out == 1);
    CHECK(ann.tensors[0].n_dims == 4 && ann.tensors[0].dims[1].n_factors == 2);
    int g = loom__ann_find(&ann, "g"), r = loom__ann_find(&ann, "r"), d = loom__ann_find(&ann, "d");
    CHECK(g >= 0 && r >= 0 && d >= 0);
    if (g >= 0 && r >= 0) {
        CHECK(ann.tensors[0].dims[1].factors[0] == g);
        CHECK(ann.tensors[0].dims[1].factors[1] == r);
    }
    if (d >= 0) CHECK(ann.ids[d].kind == LOOM_ANN_FROZEN && ann.ids[d].literal == 0);

    CHECK_OK(loom__ann_parse("a 3 -> a", &ann));
    CHECK(ann.tensors[0].n_dims == 2 && ann.tensors[0].dims[1].n_factors == 1);
    int lit = ann.tensors[0].dims[1].factors[0];
    CHECK(ann.ids[lit].literal == 3 && ann.ids[lit].kind == LOOM_ANN_FROZEN);
    CHECK(loom__ann_find(&ann, "3") == -1);  // literals are not identifiers
}

// ---- malformed --------------------------------------------------------------------------------

// `text` must fail with LOOM_ERR_FORMAT, a message with the text, "column C" with C in [lo, hi]
// and `reason`.
static void check_bad(const char *text, int lo, int hi, const char *reason) {
    loom_status st = loom_annotation_check(text);
    const char *msg = loom_last_error();
    CHECK_MSG(st == LOOM_ERR_FORMAT, "'%s': status %s, expected LOOM_ERR_FORMAT (%s)", text,
              loom_status_name(st), msg);
    CHECK_MSG(has(msg, text), "'%s': the message does not quote the annotation: %s", text, msg);
    int c = column_of(msg);
    CHECK_MSG(c >= lo && c <= hi, "'%s': column %d, expected %d..%d: %s", text, c, lo, hi, msg);
    CHECK_MSG(has(msg, reason), "'%s': message lacks '%s': %s", text, reason, msg);
    // loom__ann_parse is the same parser: same status.
    loom_annotation ann;
    CHECK(loom__ann_parse(text, &ann) == LOOM_ERR_FORMAT);
}

static void test_malformed(void) {
    check_bad("a b", 1, 4, "'->'");                           // missing arrow
    check_bad("* k+, n k+", 1, 11, "'->'");
    check_bad("a -> b -> c", 8, 8, "more than one '->'");     // second arrow at column 8
    check_bad("a, -> b", 4, 4, "empty tensor");               // nothing between ',' and '->'
    check_bad("a -> ", 5, 6, "empty tensor");                 // nothing after '->'
    check_bad("-> a", 1, 1, "empty tensor");                  // no inputs
    check_bad("a -> b,", 8, 8, "empty tensor");               // trailing comma
    check_bad("(a (b c)) -> a", 4, 4, "nested");              // '(' inside '(' at column 4
    check_bad("(a b -> a", 6, 6, "unclosed");                 // '-' at column 6 ends the product
    check_bad(")a -> a", 1, 1, "')'");
    check_bad("() -> a", 1, 2, "empty parentheses");
    check_bad("* * a -> a", 3, 3, "'*'");                     // second '*' at column 3
    check_bad("k+, k^ -> k", 5, 7, "different suffixes");     // second 'k' spans columns 5-6
    check_bad("k+ -> k", 7, 8, "different suffixes");         // reduce in, plain out
    check_bad("a a -> a", 3, 5, "'a' appears twice");
    check_bad("(a b) a -> a", 7, 9, "'a' appears twice");     // also across a product
    check_bad("a$ -> a", 2, 2, "");                           // '$' is column 2
    check_bad("a -> b$", 7, 7, "");
    check_bad("0 -> a", 1, 2, "positive");
    check_bad("1a -> a", 1, 2, "digit");
    check_bad("a - b", 3, 3, "'->'");
    check_bad("a b c d e f g -> a", 1, 19, "too many dims");
    check_bad("a, a, a, a, a, a, a, a -> a", 1, 28, "too many tensors");
    check_bad("abcdefghijklmnop -> a", 1, 17, "longer than 15");
    check_bad("a+b -> a", 2, 3, "");
    // An output with '*' needs an input with '*': also a format error with its column (the
    // output's '*' is column 6).
    check_bad("a -> *", 6, 6, "'*'");
}

// ---- inference --------------------------------------------------------------------------------

typedef struct infer_result {
    loom_status st;
    int n_out;
    int ndim[LOOM_MAX_IO];
    int64_t shape[LOOM_MAX_IO][LOOM_MAX_DIMS];
} infer_result;

// Run inference on up to 4 inputs given as {ndim, d0, d1, ...} rows.
static infer_result infer(const char *ann, const char *sizes, int n_in, const int64_t spec[][8]) {
    infer_result r;
    memset(&r, 0, sizeof r);
    int ndim[8];
    int64_t shapes[8][LOOM_MAX_DIMS];
    memset(shapes, 0, sizeof shapes);
    for (int i = 0; i < n_in; i++) {
        ndim[i] = (int)spec[i][0];
        for (int d = 0; d < ndim[i]; d++) shapes[i][d] = spec[i][1 + d];
    }
    r.n_out = -1;
    r.st = loom_annotation_infer(ann, sizes, n_in, ndim, (const int64_t(*)[LOOM_MAX_DIMS])shapes,
                                 &r.n_out, r.ndim, r.shape);
    return r;
}

// Output o must have shape {d...} (ndim entries).
static void check_shape(const infer_result *r, int o, int ndim, const int64_t *want,
                        const char *what) {
    CHECK_MSG(r->st == LOOM_OK, "%s: %s", what, loom_last_error());
    if (r->st != LOOM_OK) return;
    int same = r->ndim[o] == ndim;
    for (int d = 0; same && d < ndim; d++) same = r->shape[o][d] == want[d];
    char got[128] = "";
    size_t n = 0;
    for (int d = 0; d < r->ndim[o] && d < LOOM_MAX_DIMS && n < sizeof got; d++)
        n += (size_t)snprintf(got + n, sizeof got - n, "%s%lld", d ? "," : "",
                              (long long)r->shape[o][d]);
    CHECK_MSG(same, "%s: output %d has shape [%s]", what, o, got);
}

static void check_shape_error(const infer_result *r, const char *what, const char *w1,
                              const char *w2) {
    const char *msg = loom_last_error();
    CHECK_MSG(r->st == LOOM_ERR_SHAPE, "%s: status %s, expected LOOM_ERR_SHAPE (%s)", what,
              loom_status_name(r->st), msg);
    if (w1) CHECK_MSG(has(msg, w1), "%s: message lacks '%s': %s", what, w1, msg);
    if (w2) CHECK_MSG(has(msg, w2), "%s: message lacks '%s': %s", what, w2, msg);
}

static void test_infer_linear(void) {
    const char *lin = "* k+, n k+ -> * n";
    infer_result r = infer(lin, NULL, 2, (const int64_t[][8]){{3, 2, 3, 8}, {2, 5, 8}});
    CHECK(r.n_out == 1);
    check_shape(&r, 0, 3, (const int64_t[]){2, 3, 5}, "linear");

    // '*' may stand for zero dims.
    r = infer(lin, NULL, 2, (const int64_t[][8]){{1, 8}, {2, 5, 8}});
    check_shape(&r, 0, 1, (const int64_t[]){5}, "linear without leading dims");

    // k is 8 in x and 7 in w: the message names the input, the identifier and both lengths.
    r = infer(lin, NULL, 2, (const int64_t[][8]){{3, 2, 3, 8}, {2, 5, 7}});
    check_shape_error(&r, "linear k mismatch", "'k'", "7");
    CHECK_MSG(has(loom_last_error(), "8"), "%s", loom_last_error());
    CHECK_MSG(has(loom_last_error(), "input 1"), "%s", loom_last_error());

    // Weight with the wrong rank.
    r = infer(lin, NULL, 2, (const int64_t[][8]){{3, 2, 3, 8}, {3, 1, 5, 8}});
    check_shape_error(&r, "linear weight rank", "input 1", NULL);

    // Wrong number of inputs.
    r = infer(lin, NULL, 1, (const int64_t[][8]){{3, 2, 3, 8}});
    CHECK_MSG(r.st < 0, "one input for a two-input annotation was accepted");

    // Embedding and matmul rows of the op table.
    r = infer("*, v+ e -> * e", NULL, 2, (const int64_t[][8]){{2, 4, 7}, {2, 50, 16}});
    check_shape(&r, 0, 3, (const int64_t[]){4, 7, 16}, "embedding");
    r = infer("* m k+, * k+ n -> * m n", NULL, 2,
              (const int64_t[][8]){{4, 2, 3, 4, 6}, {4, 2, 3, 6, 5}});
    check_shape(&r, 0, 4, (const int64_t[]){2, 3, 4, 5}, "batched matmul");
}

static void test_infer_star(void) {
    // '*' must stand for the same dims in every input.
    infer_result r = infer("*, * -> *", NULL, 2, (const int64_t[][8]){{2, 2, 3}, {2, 2, 4}});
    check_shape_error(&r, "'*' length mismatch", "'*'", NULL);
    r = infer("*, * -> *", NULL, 2, (const int64_t[][8]){{2, 2, 3}, {1, 6}});
    check_shape_error(&r, "'*' rank mismatch", "'*'", NULL);
    r = infer("* m k+, * k+ n -> * m n", NULL, 2,
              (const int64_t[][8]){{4, 2, 3, 4, 6}, {4, 3, 3, 6, 5}});
    check_shape_error(&r, "matmul batch mismatch", "'*'", NULL);
    r = infer("*, * -> *", NULL, 2, (const int64_t[][8]){{3, 2, 3, 4}, {3, 2, 3, 4}});
    check_shape(&r, 0, 3, (const int64_t[]){2, 3, 4}, "elementwise");
    // Fewer dims than the named ones.
    r = infer("* a b -> * a", NULL, 1, (const int64_t[][8]){{1, 4}});
    check_shape_error(&r, "too few dims", "at least 2", NULL);
    // Cross-entropy: literal 1 output plus two '*' outputs.
    r = infer("* v+, * -> 1, *, *", NULL, 2, (const int64_t[][8]){{3, 2, 3, 10}, {2, 2, 3}});
    CHECK(r.n_out == 3);
    check_shape(&r, 0, 1, (const int64_t[]){1}, "cross-entropy loss");
    check_shape(&r, 1, 2, (const int64_t[]){2, 3}, "cross-entropy saved 1");
    check_shape(&r, 2, 2, (const int64_t[]){2, 3}, "cross-entropy saved 2");
}

static void test_infer_products(void) {
    const char *att = "b s (g r d^), b s (g d^) -> b s (g r d^)";
    // g=2, r=3 given; 48 = 2*3*d gives d=8, and the second input's (g d) = 16 agrees.
    infer_result r = infer(att, "g=2,r=3", 2, (const int64_t[][8]){{3, 1, 4, 48}, {3, 1, 4, 16}});
    check_shape(&r, 0, 3, (const int64_t[]){1, 4, 48}, "grouped product");

    // The same, with extra outputs that expose the bound identifiers one by one.
    const char *att2 = "b s (g r d^), b s (g d^) -> b s (g r d^), d^, g r, b (g r) s";
    r = infer(att2, "g=2,r=3", 2, (const int64_t[][8]){{3, 1, 4, 48}, {3, 1, 4, 16}});
    CHECK(r.n_out == 4);
    check_shape(&r, 1, 1, (const int64_t[]){8}, "d from the product");
    check_shape(&r, 2, 2, (const int64_t[]){2, 3}, "g and r from sizes");
    check_shape(&r, 3, 3, (const int64_t[]){1, 6, 4}, "(g r) as one dim");

    // Only g given: the second input gives d = 16/2 = 8, then the first gives r = 48/16 = 3.
    r = infer(att2, "g=2", 2, (const int64_t[][8]){{3, 1, 4, 48}, {3, 1, 4, 16}});
    check_shape(&r, 1, 1, (const int64_t[]){8}, "d learned from input 1");
    check_shape(&r, 2, 2, (const int64_t[]){2, 3}, "r learned after d");

    // The second input disagrees with d: (g d) = 2*8 = 16, not 20.
    r = infer(att, "g=2,r=3", 2, (const int64_t[][8]){{3, 1, 4, 48}, {3, 1, 4, 20}});
    check_shape_error(&r, "(g d) mismatch", "20", NULL);

    // 50 is not divisible by g*r = 6.
    r = infer(att, "g=2,r=3", 2, (const int64_t[][8]){{3, 1, 4, 50}, {3, 1, 4, 16}});
    check_shape_error(&r, "indivisible product", "divisible", "50");

    // No sizes: both products have two or more unknown factors.
    r = infer(att, NULL, 2, (const int64_t[][8]){{3, 1, 4, 48}, {3, 1, 4, 16}});
    check_shape_error(&r, "product without sizes", "unknown", NULL);

    // A size for an identifier the annotation lacks, and a malformed size list.
    r = infer(att, "z=2", 2, (const int64_t[][8]){{3, 1, 4, 48}, {3, 1, 4, 16}});
    CHECK_MSG(r.st == LOOM_ERR_INVALID && has(loom_last_error(), "'z'"), "%s: %s",
              loom_status_name(r.st), loom_last_error());
    r = infer(att, "g=0", 2, (const int64_t[][8]){{3, 1, 4, 48}, {3, 1, 4, 16}});
    CHECK_MSG(r.st == LOOM_ERR_INVALID, "g=0 accepted: %s", loom_status_name(r.st));
    r = infer(att, "g2", 2, (const int64_t[][8]){{3, 1, 4, 48}, {3, 1, 4, 16}});
    CHECK_MSG(r.st == LOOM_ERR_INVALID, "'g2' accepted: %s", loom_status_name(r.st));

    // A size that contradicts a plain dim.
    r = infer("a -> a", "a=3", 1, (const int64_t[][8]){{1, 4}});
    check_shape_error(&r, "size contradicts shape", "'a'", "4");

    // A literal factor inside a product.
    r = infer("(2 d) -> d", NULL, 1, (const int64_t[][8]){{1, 8}});
    check_shape(&r, 0, 1, (const int64_t[]){4}, "(2 d)");
    r = infer("(2 d) -> d", NULL, 1, (const int64_t[][8]){{1, 7}});
    check_shape_error(&r, "(2 d) with 7", "divisible", NULL);
}

static void test_infer_literals_and_outputs(void) {
    infer_result r = infer("a 3 -> a", NULL, 1, (const int64_t[][8]){{2, 4, 3}});
    check_shape(&r, 0, 1, (const int64_t[]){4}, "literal 3 matches");
    r = infer("a 3 -> a", NULL, 1, (const int64_t[][8]){{2, 4, 2}});
    check_shape_error(&r, "literal 3 vs 2", "3", "2");
    r = infer("a -> a 5", NULL, 1, (const int64_t[][8]){{1, 4}});
    check_shape(&r, 0, 2, (const int64_t[]){4, 5}, "literal output dim");

    // An output identifier no input gives and no size binds.
    r = infer("a -> a b", NULL, 1, (const int64_t[][8]){{1, 4}});
    check_shape_error(&r, "unbound output identifier", "'b'", "no length");
    // ... unless a size binds it.
    r = infer("a -> a b", "b=5", 1, (const int64_t[][8]){{1, 4}});
    check_shape(&r, 0, 2, (const int64_t[]){4, 5}, "output identifier from sizes");

    // Inference on malformed text reports the format error.
    r = infer("a -> ", NULL, 1, (const int64_t[][8]){{1, 4}});
    CHECK(r.st == LOOM_ERR_FORMAT);
}

// A rank above LOOM_MAX_DIMS for a '*' input: an error, not a write past the binder's arrays.
static int infer_rank_too_large(void) {
    int ndim[2] = {LOOM_MAX_DIMS + 1, 1};
    int64_t shapes[2][LOOM_MAX_DIMS] = {{2, 2, 2, 2, 2, 2}, {2}};  // row 1 backs the 7th dim
    int n_out = 0, out_ndim[4];
    int64_t out[4][LOOM_MAX_DIMS];
    loom_status st = loom_annotation_infer("* -> *", NULL, 1, ndim,
                                           (const int64_t(*)[LOOM_MAX_DIMS])shapes, &n_out,
                                           out_ndim, out);
    if (st < 0) return 0;
    fprintf(stderr, "loom_annotation_infer accepted a %d-dim input (status %d, output %d dims)\n",
            LOOM_MAX_DIMS + 1, st, n_out > 0 ? out_ndim[0] : -1);
    return 3;
}

static int infer_rank_negative(void) {
    int ndim[1] = {-1};
    int64_t shapes[1][LOOM_MAX_DIMS] = {{2}};
    int n_out = 0, out_ndim[4];
    int64_t out[4][LOOM_MAX_DIMS];
    loom_status st = loom_annotation_infer("* a -> a", NULL, 1, ndim,
                                           (const int64_t(*)[LOOM_MAX_DIMS])shapes, &n_out,
                                           out_ndim, out);
    return st < 0 ? 0 : 3;
}

static void test_infer_bad_ranks(void) {
    int rc = tu_in_child(infer_rank_too_large);
    CHECK_MSG(rc == 0, "loom_annotation_infer with in_ndim %d: child %s %d (expected an error "
              "status)", LOOM_MAX_DIMS + 1, rc >= 128 ? "died of signal" : "exited",
              rc >= 128 ? rc - 128 : rc);
    rc = tu_in_child(infer_rank_negative);
    CHECK_MSG(rc == 0, "loom_annotation_infer with in_ndim -1: child status %d", rc);
}

int main(void) {
    test_op_table_parses();
    test_design_examples();
    test_malformed();
    test_infer_linear();
    test_infer_star();
    test_infer_products();
    test_infer_literals_and_outputs();
    test_infer_bad_ranks();
    return tu_finish();
}
