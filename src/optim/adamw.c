/*
 * adamw.c — AdamW (torch.optim.AdamW semantics: decoupled weight decay p *= 1 - lr·wd,
 * bias-corrected first and second moments, eps outside the square root). No
 * preconditioner: P = Ĝ; the driver's rule_adamw (optim.c) performs the update.
 */
#include "method.h"

const ngd_method_ops ngd_adamw_ops = {
    .name = "adamw",
    .rule = NGD_RULE_ADAMW,
};
