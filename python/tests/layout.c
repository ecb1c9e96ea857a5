/*
 * layout.c — prints sizeof and offsetof of every field of the ngd.h structures that
 * python/ngd/_lib.py mirrors in ctypes, one "Struct.field offset" line each and one
 * "Struct size" line per struct; python/tests/test_numpy.py compares them with the mirrors,
 * so a change of ngd.h that the Python package does not follow fails the suite.
 * Built by tests/test_python.sh.
 */
#include <stddef.h>
#include <stdio.h>

#include "ngd.h"

#define F(S, T, f) printf("%s.%s %zu\n", S, #f, offsetof(T, f))
#define Z(S, T)    printf("%s %zu\n", S, sizeof(T))

int main(void) {
    Z("Matrix", ngd_matrix);
    F("Matrix", ngd_matrix, data), F("Matrix", ngd_matrix, rows), F("Matrix", ngd_matrix, cols);
    F("Matrix", ngd_matrix, ld), F("Matrix", ngd_matrix, dtype);
    Z("FactorSpec", ngd_factor_spec);
    F("FactorSpec", ngd_factor_spec, kind), F("FactorSpec", ngd_factor_spec, block);
    F("FactorSpec", ngd_factor_spec, k1), F("FactorSpec", ngd_factor_spec, k2);
    F("FactorSpec", ngd_factor_spec, dtype);
#define K(f) F("KfacOptions", ngd_kfac_options, f)
    Z("KfacOptions", ngd_kfac_options);
    K(rho), K(T_u), K(T_i), K(damping_rel), K(damping_kind), K(clip), K(clip_kappa), K(wd_start);
    K(identity_init), K(eig_zero_tol), K(rank), K(oversample), K(power_iters), K(tail);
    K(brand_rank), K(brand_mult), K(refresh_mult), K(corr_mult), K(corr_frac), K(brand_truncate);
    K(reorth_every), K(factored_apply), K(seed), K(ea_dtype), K(factor_arith);
#define C(f) F("Config", ngd_config, f)
    Z("Config", ngd_config);
    C(method), C(lr), C(momentum), C(weight_decay), C(nesterov), C(beta1), C(beta2), C(eps);
    C(damping), C(alpha1), C(T), C(lr_cov), C(lr_cov_fn), C(lr_cov_user), C(normalize_lr_cov);
    C(kfac_like), C(loss_average), C(kfac_approx), C(structure_K), C(structure_C),
        C(factor_compute);
    C(init_grad_scale), C(official_blockdiag_quirk), C(skip_nonfinite), C(keep_last_update);
    C(kfac), C(log_fn), C(log_user);
#define L(f) F("Layer", ngd_layer, f)
    Z("Layer", ngd_layer);
    L(name), L(weight), L(weight_grad), L(d_out), L(d_in), L(bias), L(bias_grad), L(override);
#define H(f) F("LayerHealth", ngd_layer_health, f)
    Z("LayerHealth", ngd_layer_health);
    H(name), H(updates), H(skips), H(decomp_failures), H(decomp_retries), H(trace_K), H(trace_C);
    H(norm_K), H(norm_C), H(grad_norm), H(update_norm), H(beta1_K), H(beta1_C), H(rank_A);
    H(rank_G), H(state_bytes), H(time_observe), H(time_update), H(time_precond);
#define G(f) F("ConvGeom", ngd_conv_geom, f)
    Z("ConvGeom", ngd_conv_geom);
    G(c_in), G(h), G(w), G(k1), G(k2), G(s1), G(s2), G(p1), G(p2), G(dil1), G(dil2), G(groups);
    return 0;
}
