// TensorBoard's debiased exponential moving average, exactly as issue 4 gives it:
//   last = w·last + (1−w)·y;  n += 1;  smoothed = last / (1 − wⁿ)
// starting from last = 0, n = 0.  A value that is not a finite number (null for a gap, NaN, ±∞)
// is passed through as it is and does not touch the state, so one NaN neither poisons the rest
// of the line nor hides where it was.  The debiasing makes the first points the values
// themselves rather than a ramp up from zero.
//
// w = 1 would divide 0 by 0; its limit as w → 1 is the running mean, which is what it returns.
// (The slider stops at 0.999 as TensorBoard's does, so w = 1 is only reached by a hand-made URL.)

export function ema(values, w) {
  if (!(w >= 0 && w <= 1)) throw new RangeError(`smoothing weight must be in [0, 1], not ${w}`);
  const out = new Array(values.length);
  let last = 0;
  let n = 0;
  let sum = 0;
  for (let i = 0; i < values.length; i++) {
    const y = values[i];
    if (typeof y !== "number" || !Number.isFinite(y)) {
      out[i] = y;
      continue;
    }
    n += 1;
    if (w === 1) {
      sum += y;
      out[i] = sum / n;
      continue;
    }
    last = w * last + (1 - w) * y;
    out[i] = last / (1 - Math.pow(w, n));
  }
  return out;
}
