/*
 * sgd.c — SGD (torch.optim.SGD semantics: coupled weight decay, momentum with zero-start
 * buffer and no dampening, optional Nesterov). No preconditioner: P = Ĝ; the driver's
 * rule_sgd (optim.c) performs the update for layers and parameters alike.
 */
#include "method.h"

const ngd_method_ops ngd_sgd_ops = {
    .name = "sgd",
    .rule = NGD_RULE_SGD,
};
