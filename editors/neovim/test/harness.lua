-- What the headless Neovim tests share: a test body runs as a coroutine that yields to the main loop
-- (typed keys, the LSP, timers) while it waits; PASS/FAIL goes to stderr and sets the exit code.
--   local h = dofile(<this folder> .. '/harness.lua'); h.run(function() ... h.finish(true, '...') end)
-- Env: CODESTRAL_TIMEOUT (s, per wait; default 120).
local uv = vim.uv or vim.loop
local M = {}
local timeout = tonumber(os.getenv('CODESTRAL_TIMEOUT') or '120') * 1000
local co

function M.log(msg)
  io.stderr:write(('[%6.1fs] %s\n'):format(uv.hrtime() / 1e9 % 1e5, msg))
end

function M.finish(ok, msg)
  M.log((ok and 'PASS: ' or 'FAIL: ') .. msg)
  vim.cmd(ok and 'qall!' or 'cquit!')
end

local function resume()
  local ok, err = coroutine.resume(co)
  if not ok then
    M.finish(false, debug.traceback(co, err))
  end
end

-- Yields to the main loop until cond() holds; its value is returned.
function M.wait_for(what, cond, ms)
  local deadline = uv.hrtime() + (ms or timeout) * 1e6
  local value = cond()
  while not value do
    if uv.hrtime() > deadline then
      error('timed out waiting for ' .. what, 0)
    end
    vim.defer_fn(resume, 50)
    coroutine.yield()
    value = cond()
  end
  return value
end

-- Runs `body` as the test, once Neovim has started.
function M.run(body)
  co = coroutine.create(body)
  vim.schedule(resume)
end

return M
