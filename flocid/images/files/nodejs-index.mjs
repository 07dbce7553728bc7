// /var/runtime/index.mjs of flocid's nodejs image: start the real aws-lambda-ric runtime loop
// (/next, /response, /error, /init/error) for the handler named by _HANDLER. As aws-lambda-ric's own
// bin, the code root is the working directory: /var/task (the image WORKDIR) for Zip functions,
// ImageConfig.WorkingDirectory for image functions.
import { run } from "/var/runtime/node_modules/aws-lambda-ric/dist/index.mjs";

const handler = process.env._HANDLER;
if (!handler) {
    throw new Error("No handler specified (_HANDLER is empty)");
}
await run(process.cwd(), handler);
