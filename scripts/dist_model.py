#!/usr/bin/env python3
"""dist_model.py — docs/distributed.md's alpha-beta model: bytes per step per rank for each
method (from the layer shapes and libngd's sharing rules, the same counts `ngd train` prints
under mpirun), and projected time per step and parallel efficiency (weak scaling: a fixed
batch per rank) for N = 1 ... 256 ranks on 25 Gb/s Ethernet and 200 Gb/s InfiniBand.
Usage: /usr/bin/python3 scripts/dist_model.py"""
import math

def vgg16bn(classes=100):
    layers, c = [], 3  # (d_K incl. bias, d_C, fully connected?)
    for co in [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]:
        layers.append((c * 9 + 1, co, False)); c = co
    layers += [(513, 512, True), (513, classes, True)]
    params = sum((dk) * dc for dk, dc, _ in layers) + 2 * sum(co for _, co, fc in layers if not fc)
    return layers, params

def chargpt(C=64, depth=2, vocab=65, T=64):
    layers = []
    for _ in range(depth):  # attention q,k,v, proj, MLP in/out: token rows, not "fully connected"
        layers += [(C + 1, 3 * C, False), (C + 1, C, False), (C + 1, 4 * C, False), (4 * C + 1, C, False)]
    layers.append((C + 1, vocab, False))
    params = sum(dk * dc for dk, dc, _ in layers) + vocab * C + T * C + (2 * depth + 1) * 2 * C
    return layers, params

T, T_u, T_i, r, p, q = 10, 10, 50, 220, 10, 4

def per_step_bytes(method, layers, params, n_local, N):
    """(allreduce bytes, broadcast bytes summed over owners, allgather block bytes) per step"""
    ar, bc, ag = 4.0 * params, 0.0, 0.0
    for dK, dC, fc in layers:
        if method == "singd-dense":
            ar += 4 * (dK * dK + dC * dC) / T
            bc += 2 * 4 * (dK * dK + dC * dC) / T  # K, C and the momenta m_K, m_C (alpha1 != 0)
        elif method == "singd-diag":
            ar += 4 * (dK + dC) / T                 # replicated: O(d) work per update
        elif method == "kfac":
            ar += 4 * (dK * dK + dC * dC) / T_u
            bc += 4 * (dK * dK + dC * dC) / T_i
        elif method == "rskfac":
            ar += 4 * (dK * dK + dC * dC) / T_u
            bc += 4 * (dK * min(r, dK) + dC * min(r, dC)) / T_i
        elif method == "bkfac":
            for d in (dK, dC):
                if fc and r + n_local * N < d:      # Brand track: rows gathered, U (d x r) sent
                    ag += 4 * d * n_local / T_u
                    bc += 4 * d * r / T_u
                else:
                    ar += 4 * d * d / T_u
                    bc += 4 * d * min(r, d) / T_i
    return ar, bc, ag

def factor_flops(method, layers, n):
    out = []
    for dK, dC, fc in layers:
        f = 0.0
        for d in (dK, dC):
            if method == "singd-dense": f += 4 * d ** 3 * 2 / T     # Π(KᵀK), L·m per update
            elif method == "kfac": f += 9 * d ** 3 / T_i
            elif method == "rskfac": f += (2 * q + 3) * 2 * d * d * (min(r, d) + p) / T_i
            elif method == "bkfac":
                f += 4 * d * (r + n) ** 2 / T_u if (fc and r + n < d) else (2 * q + 3) * 2 * d * d * (min(r, d) + p) / T_i
        out.append(f)
    return out

def t_comm(ar, bc, ag, N, alpha, beta, nmsg):
    if N == 1: return 0.0
    lg = math.log2(N)
    t = 2 * (N - 1) / N * ar / beta + bc * 2 * (N - 1) / N / beta + (N - 1) * ag / beta
    return t + nmsg * 2 * lg * alpha

def project(name, layers, params, t_fb, n_local, flops_rate, gemm_rate):
    nets = {"25 Gb/s Ethernet": (25e-6, 25e9 / 8), "200 Gb/s InfiniBand": (2e-6, 200e9 / 8)}
    Ns = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    show = [1, 2, 8, 32, 256]
    for method in ["sgd", "singd-diag", "singd-dense", "kfac", "rskfac", "bkfac"]:
        fl = factor_flops(method, layers, n_local) if method != "sgd" and method != "singd-diag" else [0.0]
        for net, (alpha, beta) in nets.items():
            row = []
            for N in Ns:
                ar, bc, ag = per_step_bytes(method, layers, params, n_local, N)
                # owners: largest first to the least-loaded rank; the slowest rank's share
                load = [0.0] * N
                for f in sorted(fl, reverse=True): load[load.index(min(load))] += f
                # eigendecompositions (LAPACK) at flops_rate; GEMM-shaped work (SINGD's
                # products, sketches, Brand updates) at gemm_rate
                t_fac = max(load) / (flops_rate if method == "kfac" else gemm_rate)
                t = t_fb + t_fac + t_comm(ar, bc, ag, N, alpha, beta, 2 * len(layers) + 1)
                if N == 1: t1 = t
                row.append((t, t1 / t))
            cells = [f"{t*1e3:.0f} ms, {e:.2f}" for N, (t, e) in zip(Ns, row) if N in show]
            print(f"| {name} | {method} | {net} | " + " | ".join(cells) + " |")

def mlp():
    return [(785, 512, True), (513, 512, True), (513, 10, True)], 669706

def bytes_table(name, layers, params, n_local):
    for method in ["sgd", "singd-diag", "singd-dense", "kfac", "rskfac", "bkfac"]:
        ar, bc, ag = per_step_bytes(method, layers, params, n_local, 2)
        print(f"| {name} | {method} | {ar/1e6:.2f} | {bc/1e6:.2f} | {ag/1e6:.3f} |")

if __name__ == "__main__":
    v, vp = vgg16bn(); g, gp = chargpt()
    print("bytes per step per rank (MB): allreduce | broadcast (all owners) | allgather block")
    bytes_table("VGG16-BN", v, vp, 128); bytes_table("chargpt", g, gp, 128)
    m, mp = mlp(); bytes_table("mlp (N = 2, 64 per rank)", m, mp, 64)
    print("\nprojected ms/step and T(1)/T(N), N = 1 2 8 32 256")
    project("VGG16-BN", v, vp, 0.40, 128, 50e9, 300e9)
    project("chargpt", g, gp, 0.064, 128, 50e9, 300e9)
