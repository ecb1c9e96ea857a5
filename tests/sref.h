/*
 * sref.h — float64 dense reference for the structured matrices of docs/algorithms.md#structures,
 * built only from a class's `entry` map (the pattern) and plain dense arithmetic, so it
 * shares no formula with the structure files it checks. All matrices are d x d row-major.
 */
#ifndef NGD_TEST_SREF_H
#define NGD_TEST_SREF_H
#include <stddef.h>

#include "structure.h"

// dense form of the stored numbers p (float) through entry(): out (d x d)
void sref_to_dense(const ngd_sdesc *s, const float *p, double *out);
// Π(S) of structure.h for any square S, as stored numbers (s->n doubles): positions whose
// mirror is in the pattern give S_ij, the others S_ij + S_ji; tied positions (same stored
// index) average.
void sref_project(const ngd_sdesc *s, const double *S, double *params);
// Π(S) as a dense d x d matrix
void sref_project_dense(const ngd_sdesc *s, const double *S, double *out);
// dense form of f64 stored numbers
void sref_params_to_dense(const ngd_sdesc *s, const double *params, double *out);
#endif
