// Token amounts are BigInt minor units; they are shown with every decimal and thousands separators,
// exactly as `royalty` prints them, so a figure on the page can be compared with a statement by eye.

function grouped(digits) {
  return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/** `units` (a non-negative BigInt) as a decimal amount with `decimals` places: 1234567891n, 6 -> "1,234.567891". */
export function formatAmount(units, decimals) {
  const scale = 10n ** BigInt(decimals);
  const whole = grouped((units / scale).toString());
  if (decimals === 0) return whole;
  return `${whole}.${(units % scale).toString().padStart(decimals, "0")}`;
}

/** A hash or address shortened for a narrow screen: 0x1234…abcd (the full value stays in the title). */
export function shortHex(value) {
  return value.length > 14 ? `${value.slice(0, 8)}…${value.slice(-6)}` : value;
}
