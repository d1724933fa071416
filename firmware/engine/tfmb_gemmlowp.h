/*
 * gemmlowp's fixed-point transcendental functions as TFLM's reference int8 kernels use them
 * (SOFTMAX: exp and reciprocal; LOGISTIC and TANH: exp, reciprocal and (1 - x) / (1 + x)).
 * Raw int32 values; Qm.n names a value with m integer and n fractional bits. The host's numpy
 * twin of each function is in tinyfed/ops/fixed_point.py.
 */
#ifndef TFMB_GEMMLOWP_H
#define TFMB_GEMMLOWP_H

#include "tfmb_internal.h"

/* SaturatingRoundingMultiplyByPOT with a positive exponent. */
static inline int32_t tfmb_sat_shl(int32_t x, int e)
{
    const int32_t threshold = (int32_t)((1u << (31 - e)) - 1u);
    if (x > threshold) return INT32_MAX;
    if (x < -threshold) return INT32_MIN;
    return tfmb_wshl(x, e);
}

/* exp(a) for a in [-1/4, 0), Q0.31 in and out. */
static inline int32_t tfmb_exp_on_interval(int32_t a)
{
    const int32_t constant_term = 1895147668; /* exp(-1/8) */
    const int32_t constant_1_over_3 = 715827883;
    const int32_t x = tfmb_wadd(a, 1 << 28); /* a + 1/8 */
    const int32_t x2 = tfmb_srdhm(x, x);
    const int32_t x3 = tfmb_srdhm(x2, x);
    const int32_t x4 = tfmb_srdhm(x2, x2);
    const int32_t x4_over_4 = tfmb_rdbp(x4, 2);
    const int32_t poly = tfmb_rdbp(tfmb_wadd(tfmb_srdhm(tfmb_wadd(x4_over_4, x3), constant_1_over_3), x2), 1);
    return tfmb_wadd(constant_term, tfmb_srdhm(constant_term, tfmb_wadd(x, poly)));
}

/* exp_on_negative_values: a <= 0 with `integer_bits` (1..5) integer bits, Q0.31 output. */
static inline int32_t tfmb_exp_on_negative_values(int32_t a, int integer_bits)
{
    static const int32_t multipliers[7] = {1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242};
    const int frac = 31 - integer_bits;
    const int32_t quarter = (int32_t)1 << (frac - 2);
    const int32_t a_mod = tfmb_wsub(a & (quarter - 1), quarter);
    int32_t result = tfmb_exp_on_interval(tfmb_sat_shl(a_mod, integer_bits));
    const int32_t remainder = tfmb_wsub(a_mod, a);
    for (int i = 0; i < 7 && i - 2 < integer_bits; ++i) /* exponents -2 ..: bit frac - 2 + i */
        if (remainder & (int32_t)(1u << (frac - 2 + i))) result = tfmb_srdhm(result, multipliers[i]);
    return a == 0 ? INT32_MAX : result;
}

/* Newton-Raphson 1 / (2 half_den) in Q2.29, from half_den = (a + 1) / 2 of a Q0.31 a. */
static inline int32_t tfmb_newton_reciprocal(int32_t a)
{
    const int64_t sum = (int64_t)a + (int64_t)INT32_MAX;
    const int32_t half_den = (int32_t)((sum + (sum >= 0 ? 1 : -1)) / 2);
    int32_t x = tfmb_wadd(1515870810, tfmb_srdhm(half_den, -1010580540)); /* 48/17 - 32/17 d */
    for (int i = 0; i < 3; ++i) {
        const int32_t hdx = tfmb_srdhm(half_den, x);
        const int32_t one_minus = tfmb_wsub(1 << 29, hdx);
        x = tfmb_wadd(x, tfmb_sat_shl(tfmb_srdhm(x, one_minus), 2));
    }
    return x;
}

/* one_over_one_plus_x_for_x_in_0_1: Q0.31 in and out. */
static inline int32_t tfmb_one_over_one_plus_x(int32_t a) { return tfmb_sat_shl(tfmb_newton_reciprocal(a), 1); }

/* one_minus_x_over_one_plus_x_for_x_in_0_1: Q0.31 in and out. */
static inline int32_t tfmb_one_minus_x_over_one_plus_x(int32_t a)
{
    return tfmb_sat_shl(tfmb_wsub(tfmb_newton_reciprocal(a), 1 << 29), 2);
}

/* logistic of a Q4.27 value (|a| < 2**31), Q0.31 output. */
static inline int32_t tfmb_logistic_q4(int32_t a)
{
    if (a == 0) return 1 << 30;
    const int32_t magnitude = a > 0 ? a : -a;
    const int32_t r = tfmb_one_over_one_plus_x(tfmb_exp_on_negative_values(-magnitude, 4));
    return a > 0 ? r : INT32_MAX - r;
}

/* tanh of a Q4.27 value (|a| < 2**31), Q0.31 output: the exp of minus twice the magnitude is
 * the same raw bits read as Q5.26. */
static inline int32_t tfmb_tanh_q4(int32_t a)
{
    if (a == 0) return 0;
    const int32_t neg_magnitude = a < 0 ? a : -a;
    const int32_t t = tfmb_one_minus_x_over_one_plus_x(tfmb_exp_on_negative_values(neg_magnitude, 5));
    return a < 0 ? -t : t;
}

#endif /* TFMB_GEMMLOWP_H */
