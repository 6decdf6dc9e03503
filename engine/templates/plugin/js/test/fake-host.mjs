// A native stand-in for the host's imports: `send` answers from a table of
// `METHOD url` → [status, JSON], and records what it was sent; `log` keeps
// the lines.
export const sent = [];
export const logged = [];
let answers = new Map();

/** Answers the next requests from `table` (`{ 'get https://…': [200, {…}] }`). */
export function answer(table) {
  answers = new Map(Object.entries(table));
  sent.length = 0;
}

export function send(request) {
  sent.push(request);
  const found = answers.get(`${request.method} ${request.url}`);
  if (!found) {
    const error = new Error('denied');
    error.payload = { tag: 'denied', val: `no fake answer for ${request.method} ${request.url}` };
    throw error;
  }
  const [status, body] = found;
  return {
    status,
    headers: [['content-type', 'application/json']],
    body: new TextEncoder().encode(JSON.stringify(body)),
  };
}

export function log(level, message) {
  logged.push([level, message]);
}
