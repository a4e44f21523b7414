/**
 * MT19937 exactly as PyTorch's CPU generator seeds and steps it (ATen's mt19937 engine): the low
 * 32 bits of the seed initialise the state, and 32-bit outputs are tempered in the standard way.
 */
const N = 624;
const M = 397;
const MATRIX_A = 0x9908b0df;
const UPPER_MASK = 0x80000000;
const LOWER_MASK = 0x7fffffff;

export class MT19937 {
  private readonly state = new Uint32Array(N);
  private index = N;

  constructor(seed: bigint) {
    this.state[0] = Number(seed & 0xffffffffn);
    for (let i = 1; i < N; i++) {
      const prev = this.state[i - 1]! ^ (this.state[i - 1]! >>> 30);
      // 1812433253 * prev + i, modulo 2^32, without losing bits to float multiplication.
      this.state[i] = (Math.imul(1812433253, prev) + i) >>> 0;
    }
  }

  private twist(): void {
    const s = this.state;
    for (let i = 0; i < N; i++) {
      const y = (s[i]! & UPPER_MASK) | (s[(i + 1) % N]! & LOWER_MASK);
      s[i] = s[(i + M) % N]! ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
    }
    this.index = 0;
  }

  /** The next 32-bit output, as an unsigned integer. */
  nextUint32(): number {
    if (this.index >= N) this.twist();
    let y = this.state[this.index++]!;
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  /** Advances past n outputs (a retried section resumes the generator where the plan says). */
  skip(n: number): void {
    for (let i = 0; i < n; i++) this.nextUint32();
  }
}
