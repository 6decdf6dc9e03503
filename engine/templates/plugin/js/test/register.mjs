// Loaded with `node --import`: resolves the host's imports
// (`weft:connector/http@0.1.0`, `weft:connector/log@0.1.0`) to the fake host.
import { register } from 'node:module';

register('./hooks.mjs', import.meta.url);
