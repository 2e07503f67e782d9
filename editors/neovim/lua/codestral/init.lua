-- codestral-ls for Neovim: starts the server for some filetypes and shows its suggestions as
-- ghost text, with Neovim's own vim.lsp.inline_completion (0.12+) or with extmarks (0.7+).
local util = require('codestral.util')
local api = vim.api

local M = {}

M.defaults = {
  cmd = { 'codestral-ls' },
  init_options = {}, -- model, device, dtype, quantize, budgetMs, maxTokens, multiline, secondOpinions, disabledLanguages
  filetypes = {
    'python', 'javascript', 'javascriptreact', 'typescript', 'typescriptreact',
    'go', 'rust', 'java', 'c', 'cpp', 'lua', 'sh',
  },
  renderer = 'auto', -- 'native' (vim.lsp.inline_completion), 'extmark', or 'auto': native where there is one
  debounce = 75, -- ms of quiet before asking (extmark renderer; native waits 200 ms)
  keymaps = { accept = '<Tab>', accept_word = '<M-Right>', dismiss = '<C-]>' }, -- false: no mapping
}
M.config = vim.deepcopy(M.defaults)
M.did_setup = false

-- Whether Neovim's own inline completion is used.
function M.native()
  return M.config.renderer ~= 'extmark' and pcall(require, 'vim.lsp.inline_completion')
end

local function ghost()
  return require('codestral.ghost')
end

local function inline()
  return require('vim.lsp.inline_completion')
end

local function client_of(bufnr)
  for _, c in ipairs((vim.lsp.get_clients or vim.lsp.get_active_clients)({ bufnr = bufnr })) do
    if c.name == 'codestral' then
      return c
    end
  end
end

-- Accepts the shown suggestion (`word`: its next word only). Returns false when none is shown.
function M.accept(word, bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  if not M.native() then
    return ghost().accept(bufnr, word)
  end
  if not word then
    return inline().get({ bufnr = bufnr })
  end
  return inline().get({
    bufnr = bufnr,
    on_accept = function(item)
      local text, r = item.insert_text, item.range
      if type(text) ~= 'string' then
        return
      end
      local row, col = unpack(api.nvim_win_get_cursor(0))
      local typed = r and r.start.row == row - 1 and api.nvim_get_current_line():sub(r.start.col + 1, col) or ''
      if text:sub(1, #typed) == typed then
        local part = util.next_word(text:sub(#typed + 1))
        util.insert(part)
        local client = vim.lsp.get_client_by_id(item.client_id)
        if #typed + #part >= #text then
          util.exec(client, item.command, bufnr)
        else
          util.partial(client, item.command, typed .. part)
        end
      end
    end,
  })
end

-- Hides the shown suggestion (extmark renderer; the native one hides on <Esc>).
function M.dismiss(bufnr)
  if M.native() then
    return false
  end
  return ghost().dismiss((bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr)
end

-- Calls back with the server's counters (`codestral/stats`).
function M.stats(callback, bufnr)
  local client = client_of(bufnr or api.nvim_get_current_buf()) or client_of(nil)
  if not client then
    return callback(nil, 'codestral-ls is not running')
  end
  util.call(client, 'request', 'codestral/stats', vim.empty_dict(), function(err, result)
    callback(result, err and err.message)
  end)
end

local function map(bufnr, key, action, desc)
  if key then
    vim.keymap.set('i', key, function()
      return action(bufnr) and '' or key
    end, { buffer = bufnr, expr = true, desc = desc })
  end
end

local function on_attach(client, bufnr)
  if M.native() then
    inline().enable(true, { bufnr = bufnr })
  else
    ghost().attach(client, bufnr, M.config.debounce)
  end
  local k = M.config.keymaps or {}
  map(bufnr, k.accept, function(b) return M.accept(false, b) end, 'codestral: accept the suggestion')
  map(bufnr, k.accept_word, function(b) return M.accept(true, b) end, 'codestral: accept the next word')
  map(bufnr, k.dismiss, M.dismiss, 'codestral: hide the suggestion')
end

local function lsp_config()
  return {
    name = 'codestral',
    cmd = M.config.cmd,
    filetypes = M.config.filetypes,
    init_options = M.config.init_options,
    on_attach = on_attach,
  }
end

-- Before Neovim 0.11: one client for every buffer of the filetypes (one model in memory).
local function start(bufnr)
  local client = M.client_id and vim.lsp.get_client_by_id(M.client_id)
  if not client or client.is_stopped() then
    local config = lsp_config()
    config.root_dir = vim.fn.getcwd()
    M.client_id = vim.lsp.start_client(config)
  end
  if M.client_id then
    vim.lsp.buf_attach_client(bufnr, M.client_id)
  end
end

function M.setup(opts)
  M.config = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts or {})
  if opts and opts.filetypes then -- lists are replaced, not merged
    M.config.filetypes = opts.filetypes
  end
  M.did_setup = true
  local group = api.nvim_create_augroup('codestral', { clear = true })
  vim.cmd('highlight default link CodestralGhost Comment')
  api.nvim_create_autocmd('ColorScheme', {
    group = group,
    callback = function()
      vim.cmd('highlight default link CodestralGhost Comment')
    end,
  })
  api.nvim_create_user_command('CodestralStats', function()
    M.stats(function(result, err)
      print(err or vim.inspect(result))
    end)
  end, { desc = 'codestral-ls counters' })

  if vim.lsp.config and vim.lsp.enable then -- 0.11+
    vim.lsp.config('codestral', lsp_config())
    vim.lsp.enable('codestral')
    return
  end
  api.nvim_create_autocmd('FileType', {
    group = group,
    pattern = M.config.filetypes,
    callback = function(a)
      start(a.buf)
    end,
  })
  for _, b in ipairs(api.nvim_list_bufs()) do
    if api.nvim_buf_is_loaded(b) and vim.tbl_contains(M.config.filetypes, vim.bo[b].filetype) then
      start(b)
    end
  end
end

return M
