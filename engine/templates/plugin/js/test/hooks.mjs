// Module resolution hooks: `weft:connector/*` is the fake host natively.
export async function resolve(specifier, context, next) {
  if (specifier.startsWith('weft:connector/')) {
    return { url: new URL('./fake-host.mjs', import.meta.url).href, shortCircuit: true };
  }
  return next(specifier, context);
}
