/**
 * Turns a push-style subscription into an async iterator with a bounded queue, so
 * `for await` consumers of QMP or adapter events cannot miss events between two
 * reads, and a consumer that stopped reading cannot grow memory without bound.
 */
export interface SubscriptionQueueOptions<T> {
  signal?: AbortSignal;
  /** Oldest events are dropped beyond this; default 1000. */
  maxQueued?: number;
  onOverflow?: (dropped: T) => void;
}

/** `subscribe` wires `push` and `end` to the source and returns the unsubscribe. */
export type Subscribe<T> = (push: (value: T) => void, end: () => void) => () => void;

export class SubscriptionQueue<T> implements AsyncIterableIterator<T> {
  private queue: T[] = [];
  private waiters: Array<(r: IteratorResult<T>) => void> = [];
  private ended = false;
  private unsubscribe: (() => void) | undefined;
  private readonly maxQueued: number;

  constructor(
    subscribe: Subscribe<T>,
    private readonly opts: SubscriptionQueueOptions<T> = {},
  ) {
    this.maxQueued = opts.maxQueued ?? 1000;
    opts.signal?.addEventListener('abort', this.onAbort, { once: true });
    const off = subscribe(
      (value) => this.push(value),
      () => this.end(),
    );
    if (this.ended) off();
    else this.unsubscribe = off;
    if (opts.signal?.aborted) this.end();
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<T> {
    return this;
  }

  next(): Promise<IteratorResult<T>> {
    if (this.queue.length > 0) return Promise.resolve({ value: this.queue.shift() as T, done: false });
    if (this.ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  return(): Promise<IteratorResult<T>> {
    this.end();
    this.queue = [];
    return Promise.resolve({ value: undefined, done: true });
  }

  private readonly onAbort = () => this.end();

  private push(value: T): void {
    if (this.ended) return;
    const waiter = this.waiters.shift();
    if (waiter) return waiter({ value, done: false });
    if (this.queue.length >= this.maxQueued) {
      const dropped = this.queue.shift() as T;
      this.opts.onOverflow?.(dropped);
    }
    this.queue.push(value);
  }

  private end(): void {
    if (this.ended) return;
    this.ended = true;
    this.unsubscribe?.();
    this.unsubscribe = undefined;
    this.opts.signal?.removeEventListener('abort', this.onAbort);
    for (const waiter of this.waiters.splice(0)) waiter({ value: undefined, done: true });
  }
}
