// A small Glance v2 client over undici: create, upload (chunked, streamed), show, download
// (whole, for small images, or as a stream), delete.
import { Readable } from 'node:stream';
import { request, type Dispatcher } from 'undici';
import { answered, describeNetError, tlsAgent, type TlsOptions } from '../openstack/http.js';
import { GlanceError } from './errors.js';

export interface GlanceImage {
  id: string;
  name?: string;
  status: string;
  size?: number | null;
  checksum?: string | null;
  os_hash_algo?: string | null;
  os_hash_value?: string | null;
  virtual_size?: number | null;
  [property: string]: unknown;
}

export interface GlanceConnection extends TlsOptions {
  /** Image service endpoint, e.g. http://127.0.0.1:9292 (with or without a trailing /v2). */
  endpoint: string;
  /** Keystone token, or undefined for a no-auth Glance. */
  token?: string;
  /** Extra headers (e.g. X-Project-Id for a Glance trusting identity headers). */
  headers?: Record<string, string>;
}

export class GlanceClient {
  readonly base: string;
  private readonly dispatcher: Dispatcher;

  constructor(private readonly conn: GlanceConnection) {
    this.base = conn.endpoint.replace(/\/+$/, '').replace(/\/v2$/, '');
    // Uploads can pause while the disk is read; don't let an idle body time the request out.
    this.dispatcher = tlsAgent(conn, { bodyTimeout: 0, headersTimeout: 0 });
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    return { ...(this.conn.token ? { 'x-auth-token': this.conn.token } : {}), ...this.conn.headers, ...extra };
  }

  private async call(method: Dispatcher.HttpMethod, path: string, opts: { json?: unknown; body?: Dispatcher.DispatchOptions['body']; headers?: Record<string, string>; signal?: AbortSignal; what: string; dispatcher?: Dispatcher }) {
    let res: Dispatcher.ResponseData;
    try {
      res = await request(`${this.base}${path}`, {
        method,
        dispatcher: opts.dispatcher ?? this.dispatcher,
        headers: this.headers({ ...(opts.json !== undefined ? { 'content-type': 'application/json' } : {}), accept: 'application/json', ...opts.headers }),
        ...(opts.json !== undefined ? { body: JSON.stringify(opts.json) } : opts.body !== undefined ? { body: opts.body } : {}),
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
    } catch (err) {
      throw new GlanceError(`${opts.what}: cannot reach Glance at ${this.base}: ${describeNetError(err)}`, undefined, { cause: err });
    }
    if (res.statusCode >= 400) {
      // a 401 body is a generic "could not verify that you are authorized" page: answered() says what it means
      const text = await res.body.text().catch(() => '');
      throw new GlanceError(`${opts.what}: ${answered('Glance', res.statusCode, text)}`, res.statusCode);
    }
    return res;
  }

  async createImage(fields: Record<string, unknown>, signal?: AbortSignal): Promise<GlanceImage> {
    const res = await this.call('POST', '/v2/images', { json: fields, what: 'creating the image', ...(signal ? { signal } : {}) });
    return (await res.body.json()) as GlanceImage;
  }

  async getImage(id: string): Promise<GlanceImage> {
    const res = await this.call('GET', `/v2/images/${encodeURIComponent(id)}`, { what: `reading image ${id}` });
    return (await res.body.json()) as GlanceImage;
  }

  /**
   * Sets properties (JSON patch: replace what exists, add the rest); a null value removes the
   * property. Core attributes such as `protected` take their own types.
   */
  async setProperties(image: GlanceImage, props: Record<string, string | boolean | null>, signal?: AbortSignal): Promise<GlanceImage> {
    const ops = Object.entries(props).flatMap(([k, v]) => {
      const path = `/${k.replace(/~/g, '~0').replace(/\//g, '~1')}`;
      if (v === null) return k in image ? [{ op: 'remove', path }] : [];
      return [{ op: k in image ? 'replace' : 'add', path, value: v }];
    });
    const res = await this.call('PATCH', `/v2/images/${encodeURIComponent(image.id)}`, {
      body: JSON.stringify(ops),
      headers: { 'content-type': 'application/openstack-images-v2.1-json-patch' },
      what: `setting the properties of image ${image.id}`,
      ...(signal ? { signal } : {}),
    });
    return (await res.body.json()) as GlanceImage;
  }

  /** Images whose properties equal FILTERS (Glance filters on any property), hidden ones included. */
  async findImages(filters: Record<string, string>): Promise<GlanceImage[]> {
    const found: GlanceImage[] = [];
    for (const hidden of ['false', 'true']) {
      let next: string | undefined = `/v2/images?${new URLSearchParams({ ...filters, os_hidden: hidden, limit: '200' })}`;
      while (next) {
        const res = await this.call('GET', next, { what: 'listing images' });
        const page = (await res.body.json()) as { images: GlanceImage[]; next?: string };
        found.push(...page.images);
        next = page.next;
      }
    }
    return found;
  }

  /** Streams the image data; `body` is consumed as it is produced (chunked transfer encoding). */
  async upload(id: string, body: AsyncIterable<Uint8Array>, signal?: AbortSignal): Promise<void> {
    // A connection of its own: the pooled one may have sat idle through the sizing pass and been
    // closed by the server (or a proxy's keep-alive timeout) just as the body starts; a streamed
    // body cannot be replayed on another connection.
    const fresh = tlsAgent(this.conn, { bodyTimeout: 0, headersTimeout: 0 });
    try {
      const res = await this.call('PUT', `/v2/images/${encodeURIComponent(id)}/file`, {
        body: Readable.from(body, { objectMode: false }),
        headers: { 'content-type': 'application/octet-stream' },
        what: `uploading image ${id}`,
        dispatcher: fresh,
        ...(signal ? { signal } : {}),
      });
      await res.body.dump();
    } finally {
      await fresh.destroy().catch(() => undefined);   // nothing in flight by now; never waits
    }
  }

  /** The whole data of a small image (a cluster index); GlanceError past MAXBYTES. */
  async download(id: string, maxBytes: number, signal?: AbortSignal): Promise<Buffer> {
    const res = await this.call('GET', `/v2/images/${encodeURIComponent(id)}/file`, { what: `downloading image ${id}`, ...(signal ? { signal } : {}) });
    const parts: Buffer[] = [];
    let size = 0;
    for await (const chunk of res.body) {
      size += chunk.length;
      if (size > maxBytes) {
        res.body.destroy();
        throw new GlanceError(`downloading image ${id}: larger than ${maxBytes} bytes, not what was expected`);
      }
      parts.push(chunk as Buffer);
    }
    return Buffer.concat(parts, size);
  }

  /** The image data as a stream (a chain being flattened reads each image once, front to back). */
  async downloadStream(id: string, signal?: AbortSignal): Promise<AsyncIterable<Uint8Array>> {
    const res = await this.call('GET', `/v2/images/${encodeURIComponent(id)}/file`, { what: `downloading image ${id}`, ...(signal ? { signal } : {}) });
    return res.body;
  }

  async deleteImage(id: string): Promise<void> {
    const res = await this.call('DELETE', `/v2/images/${encodeURIComponent(id)}`, { what: `deleting image ${id}` }).catch((err: GlanceError) => {
      if (err.status === 404) return undefined;
      throw err;
    });
    await res?.body.dump();
  }

  async close(): Promise<void> {
    await this.dispatcher.close();
  }
}
