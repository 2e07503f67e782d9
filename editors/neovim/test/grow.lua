-- Headless end-to-end test: a suggestion that grows on screen with no keystroke. With a tiny latency
-- budget the server answers the first whole line of a block, decodes the rest in the background and
-- sends codestral/suggestionUpdated; the plugin asks again and the ghost text gets longer.
--   nvim --headless -u NONE -i NONE -c 'luafile test/grow.lua'
-- Env: CODESTRAL_LS (server), CODESTRAL_RENDERER (auto|native|extmark), CODESTRAL_TIMEOUT (s, per wait).
local root = vim.fn.fnamemodify(debug.getinfo(1, 'S').source:sub(2), ':p:h:h')
vim.opt.runtimepath:prepend(root)
local api = vim.api
local h = dofile(root .. '/test/harness.lua')
local log, finish, wait_for = h.log, h.finish, h.wait_for

h.run(function()
  local codestral = require('codestral')
  codestral.setup({
    cmd = { (assert(os.getenv('CODESTRAL_LS'), 'set CODESTRAL_LS')) },
    init_options = { budgetMs = 1, multiline = 'always' },
    filetypes = { 'python' },
    renderer = os.getenv('CODESTRAL_RENDERER') or 'auto',
  })
  local native = codestral.native()
  log(('Neovim %s, %s renderer'):format(tostring(vim.version()), native and 'native' or 'extmark'))
  local dir = vim.fn.tempname()
  vim.fn.mkdir(dir, 'p')
  vim.cmd('edit ' .. dir .. '/fib.py')
  local buf = api.nvim_get_current_buf()
  api.nvim_buf_set_lines(buf, 0, -1, false, { 'def fib(n):', '    ' })
  vim.bo[buf].filetype = 'python'
  wait_for('the client to attach', function()
    return vim.fn.maparg('<Tab>', 'i', false, true).buffer == 1
  end, 60000)
  wait_for('the model to load', function() return codestral.state.kind and codestral.state.kind ~= 'loading' end)
  local client = (vim.lsp.get_clients or vim.lsp.get_active_clients)({ name = 'codestral' })[1]
  local caps = client.server_capabilities.experimental
  if not (caps and caps.codestral and caps.codestral.suggestionUpdates) then
    return finish(true, 'SKIP: the server does not send codestral/suggestionUpdated')
  end
  local updates, asked = 0, 0
  local handler = client.handlers['codestral/suggestionUpdated']
  client.handlers['codestral/suggestionUpdated'] = function(...)
    updates = updates + 1
    return handler(...)
  end
  local request = client.request
  client.request = function(...)
    local a = { ... }
    if (a[1] == client and a[2] or a[1]) == 'textDocument/inlineCompletion' then
      asked = asked + 1
    end
    return request(...)
  end

  local ns = native and api.nvim_get_namespaces()['nvim.lsp.inline_completion'] or require('codestral.ghost').ns
  local function ghost_lines() -- lines of ghost text on screen: the first plus the virtual lines
    for _, m in ipairs(api.nvim_buf_get_extmarks(buf, ns, 0, -1, { details = true })) do
      if m[4].virt_text or m[4].virt_lines then
        return 1 + #(m[4].virt_lines or {})
      end
    end
    return 0
  end

  api.nvim_win_set_cursor(0, { 2, 4 })
  api.nvim_feedkeys('A', 'n', false) -- insert mode at the end of the indented line; no key after this
  local first = wait_for('the ghost text', function() local n = ghost_lines(); return n > 0 and n end)
  log(('first drawn: %d line(s)'):format(first))
  local grown = wait_for('the ghost text to grow', function()
    local n = ghost_lines()
    return n > first and n
  end)
  log(('grown to %d lines after %d codestral/suggestionUpdated, %d inline requests'):format(grown, updates, asked))
  assert(updates > 0, 'grew without codestral/suggestionUpdated')
  -- At most one request per notification (plus the first and a move-triggered one).
  assert(asked <= updates + 3, ('%d requests for %d notifications'):format(asked, updates))
  assert(api.nvim_buf_get_lines(buf, 1, 2, true)[1] == '    ', 'the buffer changed')
  finish(true, ('the suggestion grew from %d to %d lines with no keystroke'):format(first, grown))
end)
