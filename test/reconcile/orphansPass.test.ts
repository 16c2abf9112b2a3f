import { describe, expect, it } from 'vitest';
import { isOrphanPassDue, parseEpochMs, parseUnknownMachines } from '../../src/reconcile/orphanPass.js';

const T = 1_750_000_000_000;

describe('isOrphanPassDue', () => {
  it('runs the first pass at once', () => {
    expect(isOrphanPassDue(null, T, 60)).toBe(true);
  });

  it('waits the whole period: not 1 ms before it, at it and after', () => {
    expect(isOrphanPassDue(T, T, 60)).toBe(false);
    expect(isOrphanPassDue(T, T + 60_000 - 1, 60)).toBe(false);
    expect(isOrphanPassDue(T, T + 60_000, 60)).toBe(true);
    expect(isOrphanPassDue(T, T + 90_000, 60)).toBe(true);
  });

  it('honours fractions of a second', () => {
    expect(isOrphanPassDue(T, T + 499, 0.5)).toBe(false);
    expect(isOrphanPassDue(T, T + 500, 0.5)).toBe(true);
  });

  it('never runs with a period of 0', () => {
    expect(isOrphanPassDue(null, T, 0)).toBe(false);
    expect(isOrphanPassDue(T - 10 ** 9, T, 0)).toBe(false);
  });

  it('runs when the last pass lies in the future (the clock went back)', () => {
    expect(isOrphanPassDue(T + 1, T, 60)).toBe(true);
  });
});

describe('parseEpochMs', () => {
  it('reads whole non-negative numbers only', () => {
    expect(parseEpochMs(String(T))).toBe(T);
    expect(parseEpochMs('0')).toBe(0);
    expect(parseEpochMs(null)).toBeNull();
    expect(parseEpochMs('')).toBeNull();
    expect(parseEpochMs('-5')).toBeNull();
    expect(parseEpochMs('1.5')).toBeNull();
    expect(parseEpochMs('soon')).toBeNull();
    expect(parseEpochMs('9'.repeat(30))).toBeNull();
  });
});

describe('parseUnknownMachines', () => {
  it('keeps valid first sightings and drops bad entries', () => {
    const map = parseUnknownMachines({ 'leak-1': String(T), 'leak-2': 'x', 'leak-3': String(T - 5) });
    expect([...map]).toEqual([
      ['leak-1', T],
      ['leak-3', T - 5],
    ]);
  });
});
